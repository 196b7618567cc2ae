"""fleetwire device SDK for Python: encode, decode and send frames of the
fleetwire wire protocol, version 1 (proto/PROTOCOL.md in the fleetwire
repository).

    from fleetwire import UdpSender
    with UdpSender("127.0.0.1:4480") as s:
        s.hello(42, firmware="1.0.0", model="demo")
        s.position(42, lat=48.1372, lon=11.5755, speed=13.9, heading=270)

Standard library only. The codec (`fleetwire.wire`) was written from the
specification alone, as an independent implementation next to the Rust one.
"""

from .sender import UdpSender, event, hello, monitoring, now_ms, position, sample
from .wire import (
    MAX_LEN,
    DecodeError,
    EncodeError,
    annotate,
    compute_tag,
    crc32c,
    decode,
    decode_with_tag,
    encode,
    verify,
)

__version__ = "0.1.0"

__all__ = [
    "UdpSender", "position", "monitoring", "event", "hello", "sample", "now_ms",
    "encode", "decode", "decode_with_tag", "verify", "compute_tag", "crc32c",
    "annotate", "DecodeError", "EncodeError", "MAX_LEN", "__version__",
]
