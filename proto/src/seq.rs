//! [`Seq`]: a sequence of readings or batch samples that is either a slice
//! the caller built (for encoding) or a checked view into a decoded datagram
//! (so decoding needs no allocator and no fixed-capacity array).

use core::fmt;

use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::error::DecodeError;

/// An item that can be read back from a checked region of a datagram.
///
/// Implemented for [`Reading`](crate::Reading) and [`Sample`](crate::Sample).
pub trait SeqItem<'a>: Copy {
    /// Reads one item from the front of `bytes`, returning it and the rest.
    #[doc(hidden)]
    fn take(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError>;
}

/// A sequence of `T` that borrows either a caller's slice or a region of a
/// decoded datagram whose every item has already been checked.
pub struct Seq<'a, T> {
    repr: Repr<'a, T>,
}

enum Repr<'a, T> {
    Slice(&'a [T]),
    Wire { bytes: &'a [u8], len: u16 },
}

impl<T> Clone for Repr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Repr<'_, T> {}
impl<T> Clone for Seq<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Seq<'_, T> {}

impl<'a, T> Seq<'a, T> {
    /// The empty sequence.
    pub const EMPTY: Self = Seq { repr: Repr::Slice(&[]) };

    /// A sequence over a slice (to encode).
    pub const fn from_slice(items: &'a [T]) -> Self {
        Seq { repr: Repr::Slice(items) }
    }

    /// A view over `len` items encoded back to back in `bytes`, which the
    /// decoder has already checked.
    pub(crate) const fn checked_wire(bytes: &'a [u8], len: u16) -> Self {
        Seq { repr: Repr::Wire { bytes, len } }
    }

    /// Number of items.
    pub const fn len(&self) -> usize {
        match self.repr {
            Repr::Slice(s) => s.len(),
            Repr::Wire { len, .. } => len as usize,
        }
    }

    /// True when there are no items.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a, T: SeqItem<'a>> Seq<'a, T> {
    /// Iterates over the items.
    pub fn iter(&self) -> SeqIter<'a, T> {
        SeqIter { repr: self.repr }
    }
}

impl<'a, T: SeqItem<'a>> IntoIterator for Seq<'a, T> {
    type Item = T;
    type IntoIter = SeqIter<'a, T>;
    fn into_iter(self) -> SeqIter<'a, T> {
        self.iter()
    }
}

impl<'a, T: SeqItem<'a>> IntoIterator for &Seq<'a, T> {
    type Item = T;
    type IntoIter = SeqIter<'a, T>;
    fn into_iter(self) -> SeqIter<'a, T> {
        self.iter()
    }
}

/// Iterator over a [`Seq`].
pub struct SeqIter<'a, T> {
    repr: Repr<'a, T>,
}

impl<'a, T: SeqItem<'a>> Iterator for SeqIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match &mut self.repr {
            Repr::Slice(s) => {
                let (first, rest) = s.split_first()?;
                *s = rest;
                Some(*first)
            }
            Repr::Wire { bytes, len } => {
                if *len == 0 {
                    return None;
                }
                // The region was checked by `decode`, so this cannot fail; if
                // it ever did, the iterator ends instead of panicking.
                match T::take(bytes) {
                    Ok((item, rest)) => {
                        *bytes = rest;
                        *len -= 1;
                        Some(item)
                    }
                    Err(_) => {
                        *len = 0;
                        None
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self.repr {
            Repr::Slice(s) => s.len(),
            Repr::Wire { len, .. } => len as usize,
        };
        (0, Some(n))
    }
}

impl<'a, T: SeqItem<'a> + PartialEq> PartialEq for Seq<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a, T: SeqItem<'a> + fmt::Debug> fmt::Debug for Seq<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T: SeqItem<'a> + Serialize> Serialize for Seq<'a, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for item in self.iter() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}
