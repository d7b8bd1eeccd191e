"""The read path of client connections: the common frame without the parser's cost.

websockets parses every incoming byte with a generator-based parser (a
``yield from`` chain per frame, then the protocol's event list and a
``send_data`` round per read): ~3.4 µs for a 230-byte chat frame on the
build machine, more than the rest of the frame's intake. :class:`FastFrames`
reads the frame most clients send, a masked, unfragmented text or binary
frame without extension bits of up to 64 KiB, itself (~0.7 µs: header,
unmask with websockets' C ``apply_mask``) and hands it to the same
:class:`~websockets.asyncio.messages.Assembler` the parser feeds. Every other
frame (ping, pong, close, fragments, compressed frames, frames with bad
headers or over the size limit) goes to websockets unchanged.

Contract (what a client observes is websockets' behaviour, byte for byte):

* Frames reach the connection's reader in stream order, whichever path read
  them: both paths put into the one assembler, synchronously, in order.
* websockets only ever receives whole frames once this path is engaged, so
  its parser is always at a frame boundary and every frame it parses means
  what it would have meant. A frame split across reads waits here (at most
  one frame: under the size limit plus its header) until it is whole.
* The assembler's flow control (pausing the transport past its high water
  mark), UTF-8 validation of text (in ``recv``: 1007 on invalid UTF-8) and
  the message size limit (a frame over it goes to websockets, which closes
  with 1009) are websockets' own.
* Engaged only from the first read after the opening handshake with nothing
  left in websockets' buffer (a client that sent frames before the answer
  keeps websockets' parser for its whole life), and only while the
  protocol is OPEN: once it is not (a close frame came or went), every byte
  goes to websockets, including a frame waiting here.
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (the C extension ships in every wheel)
    from websockets.utils import apply_mask

_TEXT, _BINARY = 0x81, 0x82  # FIN set, no RSV bits: a whole uncompressed message
_OPCODES = {_TEXT: Opcode.TEXT, _BINARY: Opcode.BINARY}


class FastFrames(ServerConnection):
    """A server connection whose common frames skip websockets' parser (see the module)."""

    _fast: bool | None = None  # None: not decided yet (handshake); False: websockets' only
    _partial: bytes = b""  # the start of a frame not yet whole (engaged only)

    def data_received(self, data: bytes) -> None:
        fast = self._fast
        if fast is None:
            fast = self._engage()
        if not fast:
            super().data_received(data)
            return
        if self._partial:
            data, self._partial = self._partial + data, b""
        self._split(data)

    def _engage(self) -> bool:
        """Decide, on the first read after the handshake, whether this path runs."""
        protocol = self.protocol
        if protocol.state is State.CONNECTING:
            return False  # undecided: the handshake is websockets' own
        self._fast = (protocol.state is State.OPEN and not protocol.reader.buffer
                      and protocol.current_size is None
                      and all(isinstance(e, PerMessageDeflate) for e in protocol.extensions))
        return self._fast

    def _split(self, data: bytes) -> None:
        """Read the whole frames of ``data``: the common ones here, the others
        by websockets; keep an incomplete last one for the next read."""
        protocol = self.protocol
        limit = protocol.max_message_size
        size = len(data)
        pos = 0
        while size - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4])
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10])
                head = 10
            masked = second & 0x80
            if masked:
                head += 4
            if limit is not None and length > limit:
                self._give_up(data[pos:])  # websockets closes with 1009
                return
            end = pos + head + length
            if end > size:
                break
            if (masked and first in _OPCODES and head <= 8 and protocol.current_size is None
                    and protocol.state is State.OPEN):
                payload = apply_mask(data[pos + head:end], data[pos + head - 4:pos + head])
                self.recv_messages.put(Frame(_OPCODES[first], payload, True))
            else:
                super().data_received(data[pos:end])
                if protocol.state is not State.OPEN:
                    self._give_up(data[end:])
                    return
            pos = end
        if pos < size:
            self._partial = data[pos:]

    def _give_up(self, rest: bytes) -> None:
        """Hand the rest of the stream to websockets for good."""
        self._fast = False
        if rest:
            super().data_received(rest)
