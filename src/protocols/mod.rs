//! The wire formats of other device protocols, as sans-IO decoders: checked
//! views that validate everything before they return, refuse with a typed
//! error (a stable label per reason), never panic and allocate nothing for
//! input they refuse. A leaf: they know nothing of the server.
//!
//! * [`teltonika`]: Codec 8 / 8 Extended over UDP (commercial trackers) and
//!   its acknowledgement.
//! * [`osmand`]: the OsmAnd / Traccar Client HTTP protocol (phones).

pub(crate) mod osmand;
pub(crate) mod teltonika;
