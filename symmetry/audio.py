"""SPS audio: FluidSynth note rendering, scale assembly and the paper's STFT / a CQT front-end.

Facts follow spec §2.1 (camera-ready `sps_sound`): 16 kHz, notes of 2 048 samples with a 512-sample
gap before each, pitch bend = round(frac * 8191 * 0.5) (±2-semitone wheel), a linear fade over the
last 512 samples only for integer pitches inside the instrument's pre-rendered range, STFT
hann 1024 / hop 512 (scipy, centred, zero padded) -> 513 bins x 5 frames per note,
y = log2(1 + |X| * 1024) / 12.5.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

SAMPLE_RATE = 16_000
HOP = 512
WIN = 1024
NOTE_SAMPLES = 4 * HOP          # 2 048 samples = 128 ms of sounding note
GAP_SAMPLES = HOP               # 512 samples of silence before every note
FRAMES_PER_NOTE = 5             # 4 note hops + 1 gap hop
FADE_SAMPLES = 512
VELOCITY = 100
BEND_MAX = 8191
BEND_RATIO = 0.5                # official constant: frac semitones -> frac * 8191 * 0.5
LOG_K = 12.5                    # y = log2(1 + mag) / LOG_K
MAG_SCALE = float(WIN)          # magnitude x 1024 (undoes scipy's 1/sum(window) scaling, roughly)
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11, 12, 11, 9, 7, 5, 4, 2, 0)
FLUID_R3 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TIMGM6MB = "/usr/share/sounds/sf2/TimGM6mb.sf2"
STFT_BINS = WIN // 2 + 1        # 513
CQT_FMIN_MIDI = 36              # C2 = 65.4 Hz
CQT_BINS_PER_OCTAVE = 24
CQT_DEFAULT_BINS = 129          # 36 .. 100 in quarter tones (65 Hz .. 2.6 kHz); 129 keeps the conv stack exact
CQT_SCALE = 80.0                # puts CQT log-magnitudes of the accordion data in the STFT's range (max ~0.3)

# music21 instrument class -> (GM program, 0-based, from music21's midiProgram; pre-rendered pitch range
# [lo, hi) of `intruments_and_ranges.py`). Accordion is the camera-ready instrument; the rest are §2.2.
INSTRUMENTS: dict[str, tuple[int, tuple[int, int]]] = {
    "Accordion": (21, (58, 84)), "AcousticBass": (32, (48, 97)), "Banjo": (105, (36, 97)),
    "BaritoneSaxophone": (67, (36, 73)), "Bassoon": (70, (36, 85)), "Celesta": (8, (36, 97)),
    "ChurchBells": (14, (36, 97)), "Clarinet": (71, (41, 85)), "Clavichord": (7, (36, 85)),
    "Dulcimer": (15, (36, 85)), "ElectricBass": (33, (40, 85)), "ElectricGuitar": (26, (36, 97)),
    "ElectricOrgan": (16, (36, 97)), "ElectricPiano": (2, (36, 97)), "EnglishHorn": (69, (36, 86)),
    "Flute": (73, (48, 97)), "FretlessBass": (35, (36, 85)), "Glockenspiel": (9, (36, 97)),
    "Guitar": (24, (36, 97)), "Harmonica": (22, (36, 97)), "Harp": (46, (36, 97)),
    "Harpsichord": (6, (36, 97)), "Horn": (60, (36, 97)), "Kalimba": (108, (36, 97)),
    "Koto": (107, (36, 97)), "Mandolin": (48, (36, 97)), "Marimba": (12, (36, 97)),
    "Oboe": (68, (36, 97)), "Ocarina": (79, (36, 97)), "Organ": (19, (36, 97)),
    "PanFlute": (75, (36, 97)), "Piano": (0, (36, 97)), "Piccolo": (72, (48, 97)),
    "Recorder": (74, (36, 97)), "ReedOrgan": (20, (36, 97)), "Sampler": (55, (36, 97)),
    "Saxophone": (65, (36, 85)), "Shakuhachi": (77, (36, 97)), "Shamisen": (106, (36, 97)),
    "Shehnai": (111, (36, 97)), "Sitar": (104, (36, 97)), "SopranoSaxophone": (64, (36, 97)),
    "SteelDrum": (114, (36, 97)), "Timpani": (47, (36, 97)), "Trombone": (57, (36, 97)),
    "Trumpet": (56, (36, 97)), "Tuba": (58, (36, 73)), "Vibraphone": (11, (36, 97)),
    "Viola": (41, (36, 97)), "Violin": (40, (36, 97)), "Violoncello": (42, (36, 97)),
    "Whistle": (78, (48, 97)), "Xylophone": (13, (36, 97)),
}


def instrument(name: str) -> tuple[int, tuple[int, int]]:
    """(GM program, pre-rendered range) of a music21 instrument class name, e.g. 'Accordion'."""
    if name not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {name!r}; known: {sorted(INSTRUMENTS)}")
    return INSTRUMENTS[name]


def bend_of(pitch: float) -> tuple[int, int]:
    """(MIDI note, pitch-bend value) for a possibly fractional pitch, as the official renderer does."""
    note = int(round(pitch))  # Python rounding (half to even), like the official code
    return note, int(round((pitch - note) * BEND_MAX * BEND_RATIO))


class NoteRenderer:
    """Renders single notes with pyfluidsynth in-process; each distinct note is rendered once (cached).

    A fresh synth per note (soundfont loaded with dynamic sample loading, ~20 ms) gives every note a
    clean reverb/chorus state, as the official one-MIDI-file-per-note FluidSynth CLI runs did.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self._cache: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def render(self, soundfont: str, program: int, pitch: float, fade: bool = False) -> np.ndarray:
        """Mono float32 [NOTE_SAMPLES] of one note at velocity 100; `fade` = linear fade of the last 512."""
        note, bend = bend_of(pitch)
        key = (os.path.abspath(soundfont), int(program), note, bend, bool(fade))
        if key not in self._cache:
            audio = self._synth(key[0], key[1], note, bend)
            if not np.any(audio):
                raise ValueError(f"soundfont {soundfont}: program {program} pitch {pitch} "
                                 f"(MIDI note {note}, bend {bend}) renders silent")
            if fade:
                audio[-FADE_SAMPLES:] *= np.linspace(1.0, 0.0, FADE_SAMPLES, dtype=np.float32)
            self._cache[key] = audio
        return self._cache[key].copy()

    def _synth(self, soundfont: str, program: int, note: int, bend: int) -> np.ndarray:
        """One fluidsynth run: bend, note-on at t=0, NOTE_SAMPLES frames (note-off would come later)."""
        import fluidsynth  # imported lazily: needs the Debian libfluidsynth3

        if not os.path.isfile(soundfont):
            raise ValueError(f"soundfont {soundfont} does not exist")
        if not 0 <= note <= 127 or not 0 <= program <= 127:
            raise ValueError(f"soundfont {soundfont}: program {program} / MIDI note {note} out of 0..127")
        synth = fluidsynth.Synth(samplerate=float(self.sample_rate), **{"synth.dynamic-sample-loading": 1})
        try:
            sfid = synth.sfload(soundfont)
            if sfid < 0:
                raise ValueError(f"soundfont {soundfont} could not be loaded by FluidSynth (corrupt?)")
            if synth.program_select(0, sfid, 0, program) < 0:
                raise ValueError(f"soundfont {soundfont} has no preset for GM program {program} (bank 0)")
            synth.pitch_bend(0, bend)
            synth.noteon(0, note, VELOCITY)
            stereo = synth.get_samples(NOTE_SAMPLES).reshape(-1, 2).astype(np.float32)
        finally:
            synth.delete()
        return stereo.mean(axis=1) / 32768.0  # 16-bit render, averaged to mono like librosa.load


def scale_pitches(start: float, offsets: Sequence[float] = MAJOR_SCALE) -> np.ndarray:
    """Pitches of one scale run (float64 [T]) from a (possibly fractional) start pitch."""
    return start + np.asarray(offsets, dtype=np.float64)


def assemble_sequence(notes: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate notes, each preceded by GAP_SAMPLES of silence -> float32 [T * 2 560]."""
    parts = []
    for audio in notes:
        parts += [np.zeros(GAP_SAMPLES, np.float32), np.asarray(audio, np.float32)[:NOTE_SAMPLES]]
    return np.concatenate(parts)


def render_sequence(renderer: NoteRenderer, soundfont: str, program: int, pitches: Sequence[float],
                    fade_range: tuple[int, int] | None) -> np.ndarray:
    """Render and assemble one sequence; a note is faded iff it is an integer pitch in [lo, hi)."""
    notes = []
    for p in pitches:
        fade = fade_range is not None and abs(p - round(p)) < 1e-9 and fade_range[0] <= round(p) < fade_range[1]
        notes.append(renderer.render(soundfont, program, float(p), fade=fade))
    return assemble_sequence(notes)


def strip_leading_zeros(audio: np.ndarray) -> np.ndarray:
    """Drop leading exact-zero samples (the official loader does this, removing the first gap)."""
    nz = np.flatnonzero(audio)
    if nz.size == 0:
        raise ValueError("audio is entirely silent")
    return audio[nz[0]:]


def stft_magnitude(audio: np.ndarray) -> np.ndarray:
    """scipy-style STFT magnitude x 1024: hann 1024, hop 512, centred, zero padded -> [513, frames]."""
    from scipy.signal import stft

    _, _, spec = stft(audio, nperseg=WIN, noverlap=WIN - HOP, nfft=WIN)
    return (np.abs(spec) * MAG_SCALE).astype(np.float32)


def cqt_magnitude(audio: np.ndarray, n_bins: int = CQT_DEFAULT_BINS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """librosa CQT magnitude x CQT_SCALE: hop 512, fmin MIDI 36, 24 bins/octave -> [n_bins, frames]."""
    import librosa

    fmin = librosa.midi_to_hz(CQT_FMIN_MIDI)
    spec = librosa.cqt(audio.astype(np.float32), sr=sample_rate, hop_length=HOP, fmin=fmin,
                       n_bins=n_bins, bins_per_octave=CQT_BINS_PER_OCTAVE)
    return (np.abs(spec) * CQT_SCALE).astype(np.float32)


def normalise(mag: np.ndarray) -> np.ndarray:
    """y = log2(1 + mag) / 12.5 (about [0, 1], so BCE can be used)."""
    return (np.log2(1.0 + mag) / LOG_K).astype(np.float32)


def features_to_magnitude(y: np.ndarray) -> np.ndarray:
    """Inverse of `normalise`: mag = 2^(12.5 y) - 1 (still x 1024 for the STFT)."""
    return (np.exp2(np.asarray(y, np.float64) * LOG_K) - 1.0).astype(np.float32)


def _segment(mag: np.ndarray, n_notes: int) -> np.ndarray:
    """[F, frames] -> [n_notes, F, 5]; missing trailing frames stay zero, extra frames are dropped."""
    need = n_notes * FRAMES_PER_NOTE
    if mag.shape[1] < need:
        mag = np.pad(mag, ((0, 0), (0, need - mag.shape[1])))
    return mag[:, :need].reshape(mag.shape[0], n_notes, FRAMES_PER_NOTE).transpose(1, 0, 2)


def sequence_features(audio: np.ndarray, n_notes: int, feature: str = "stft", n_bins: int = 0,
                      sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Assembled sequence audio -> normalised features float32 [T, F, 5].

    feature 'stft': F = n_bins lowest of the 513 bins (0 = all 513; 257 -> 0..4 kHz, 129 -> 0..2 kHz).
    feature 'cqt': F = n_bins CQT bins (0 = 129). Leading zeros are stripped first; the
    75 = 15 x 5 frames follow from len = 15 * 2 560 - 512 - (a few attack zeros) -> ceil(len/512) + 1.
    """
    return _features(strip_leading_zeros(np.asarray(audio, np.float32)), n_notes, feature, n_bins, sample_rate)


def _features(audio: np.ndarray, n_notes: int, feature: str, n_bins: int, sample_rate: int) -> np.ndarray:
    """Audio (already stripped) -> normalised [n_notes, F, 5]."""
    if feature == "stft":
        if not 0 <= n_bins <= STFT_BINS:
            raise ValueError(f"data.n_bins={n_bins} must be in 0..{STFT_BINS} for the STFT")
        mag = stft_magnitude(audio)[: n_bins or STFT_BINS]
    elif feature == "cqt":  # zero-pad the end so the centred CQT has >= n_notes * 5 frames, like the STFT
        need = n_notes * FRAMES_PER_NOTE * HOP
        audio = np.pad(audio, (0, max(0, need - audio.shape[0])))
        mag = cqt_magnitude(audio, n_bins or CQT_DEFAULT_BINS, sample_rate)
    else:
        raise ValueError(f"data.feature={feature!r} must be 'stft' or 'cqt'")
    return normalise(_segment(mag, n_notes))


def note_features(note_audio: np.ndarray, feature: str = "stft", n_bins: int = 0, strip: bool = True) -> np.ndarray:
    """Features [F, 5] of a single note followed by its gap, as it appears inside a sequence.

    strip=True drops the note's own leading zeros (a few attack samples; in a sequence every note is
    shifted by the *first* note's leading zeros instead, so blocks agree up to that few-sample offset).
    """
    audio = np.concatenate([np.asarray(note_audio, np.float32)[:NOTE_SAMPLES], np.zeros(GAP_SAMPLES, np.float32)])
    if strip:
        audio = strip_leading_zeros(audio)
    return _features(audio, 1, feature, n_bins, SAMPLE_RATE)[0]


def feature_size(feature: str = "stft", n_bins: int = 0) -> int:
    """Number of frequency bins F the features will have (for building the model)."""
    if feature == "stft":
        return n_bins or STFT_BINS
    if feature == "cqt":
        return n_bins or CQT_DEFAULT_BINS
    raise ValueError(f"data.feature={feature!r} must be 'stft' or 'cqt'")
