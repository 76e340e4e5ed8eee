"""A minimal Standard MIDI File reader for tests, written from the SMF 1.0 layout and independent of symusic:
what a MIDI player sees (tempo / time-signature meta events, note on/off pairs, where each track ends)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field


@dataclass
class Smf:
    tpq: int
    tempos: list[tuple[int, int]] = field(default_factory=list)            # (tick, microseconds per quarter)
    time_signatures: list[tuple[int, int, int]] = field(default_factory=list)  # (tick, numerator, denominator)
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)    # (channel, pitch, on tick, off tick)
    track_ends: list[int] = field(default_factory=list)                     # End-of-Track tick per track

    @property
    def end(self) -> int:
        """The file's length in ticks: its last End-of-Track."""
        return max(self.track_ends)


def _varlen(b: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        c = b[i]
        i += 1
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i


def read_smf(path) -> Smf:
    data = open(path, "rb").read()
    assert data[:4] == b"MThd"
    hlen, _, ntracks, division = struct.unpack(">IHHH", data[4:14])
    smf, pos = Smf(tpq=division), 8 + hlen
    for _ in range(ntracks):
        assert data[pos:pos + 4] == b"MTrk"
        n = struct.unpack(">I", data[pos + 4:pos + 8])[0]
        trk, i, t, status, on = data[pos + 8:pos + 8 + n], 0, 0, 0, {}
        pos += 8 + n
        while i < len(trk):
            dt, i = _varlen(trk, i)
            t += dt
            if trk[i] & 0x80:
                status, i = trk[i], i + 1
            if status == 0xFF:
                kind = trk[i]
                ln, i = _varlen(trk, i + 1)
                body, i = trk[i:i + ln], i + ln
                if kind == 0x51:
                    smf.tempos.append((t, int.from_bytes(body, "big")))
                elif kind == 0x58:
                    smf.time_signatures.append((t, body[0], 2 ** body[1]))
                elif kind == 0x2F:
                    smf.track_ends.append(t)
                    break
            elif status in (0xF0, 0xF7):
                ln, i = _varlen(trk, i)
                i += ln
            else:
                hi, ch = status & 0xF0, status & 0x0F
                size = 1 if hi in (0xC0, 0xD0) else 2
                args, i = trk[i:i + size], i + size
                if hi == 0x90 and args[1] > 0:
                    on[(ch, args[0])] = t
                elif hi == 0x80 or hi == 0x90:
                    smf.notes.append((ch, args[0], on.pop((ch, args[0])), t))
    return smf
