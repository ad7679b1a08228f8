"""`Model`: an LFM2-Audio model held in memory, and `transcribe` on top of it.

The native engine (``pylfm._core.Engine``) loads the text GGUF and the mmproj once;
this module turns what users have (paths, bytes, arrays, long recordings) into
engine requests and the engine's output into results.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .audio import load_audio
from .errors import DeviceError, ModelLoadError, PylfmError
from .formats import Segment
from .prompt import ASR_SYSTEM_PROMPT, MEDIA_MARKER, build_prompt
from .resolve import DEFAULT_QUANT, resolve
from .vad import split_windows

log = logging.getLogger("pylfm")
log.addHandler(logging.NullHandler())  # a library stays silent unless the application configures logging
_llama_log = logging.getLogger("pylfm.llama")
# llama.cpp's own levels, one step down: its warnings (e.g. "audio input is experimental"
# on every load) are routine for us, and its errors also reach the user as exceptions.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}

DEVICES = ("auto", "cpu", "gpu", "cuda", "metal", "vulkan", "sycl", "hip")
DEFAULT_WINDOW_S = 30.0
# llama.cpp's LFM2A encoder has a fixed relative-position table (16k rows at 2 mel frames
# each): one audio chunk may not exceed ~327 s, or the process aborts. Stay well below.
MAX_WINDOW_S = 300.0
DEFAULT_MAX_NEW_TOKENS = 512
_CTX_PER_SEQUENCE = 2048  # a 30 s window is ~400 prompt tokens + up to 512 generated

AudioInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]


@dataclass
class Timings:
    """Milliseconds spent in each stage. Windows decoded together share one generation
    loop; each is given an equal share of its wall time, so sums over windows (and the
    totals of a long recording) count that time once."""

    load_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.prefill_ms + self.decode_ms

    def add(self, other: "Timings") -> None:
        self.encode_ms += other.encode_ms
        self.prefill_ms += other.prefill_ms
        self.decode_ms += other.decode_ms


@dataclass
class Transcription:
    """What `Model.transcribe` returns. ``str(result)`` is the text."""

    text: str
    tokens: List[int]
    segments: List[Segment]
    duration: float
    timings: Timings
    device: str
    n_prompt_tokens: int = 0
    n_audio_tokens: int = 0
    stop_reason: str = "stop"

    def __str__(self) -> str:
        return self.text

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class TranscriptionInfo:
    """Facts about a long-form run, known before its segments are decoded
    (timings fill in as the lazy segment iterator advances)."""

    duration: float
    sample_rate: int
    n_windows: int
    device: str
    model: str
    timings: Timings = field(default_factory=Timings)


class Model:
    """An LFM2-Audio model (text GGUF + audio mmproj GGUF) loaded once for many calls.

    Args:
        model: path to the text-model ``.gguf``, a directory holding both GGUFs, or a
            Hugging Face repo id (default: ``$PYLFM_MODEL`` or LiquidAI/LFM2.5-Audio-1.5B-GGUF).
        mmproj: path to the ``mmproj-*.gguf`` (default: ``$PYLFM_MMPROJ`` or found next to model).
        device: "auto" (CUDA or Metal when the build has it, else CPU), "cpu", "gpu",
            "cuda", "metal", ... optionally with an index ("cuda:1").
        n_threads: CPU threads (default: the CPUs available to this process).
        batch_size: how many windows/files are decoded as parallel sequences.
        n_ctx: total context in tokens, shared by the parallel sequences
            (default: 2048 per sequence).
        quant: which quantization to pick when downloading from the hub.
        flash_attn: let llama.cpp use flash attention where the backend supports it.
        verbose: echo llama.cpp's own log to stderr.

    Thread safety: calls from several threads are safe; each call holds the engine
    for its duration (requests are serialised). Use ``batch_size`` or
    `transcribe_batch` for throughput.
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, mmproj: Optional[Union[str, os.PathLike]] = None,
                 *, device: str = "auto", n_threads: Optional[int] = None, batch_size: int = 4,
                 n_ctx: Optional[int] = None, quant: str = DEFAULT_QUANT, flash_attn: bool = False,
                 verbose: bool = False) -> None:
        device = _check_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_threads = n_threads or _available_cpus()
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        model_path, mmproj_path = resolve(model, mmproj, quant)
        _check_pair(model_path, mmproj_path)
        _core.set_verbose(verbose)
        try:
            self._engine = _core.Engine(str(model_path), str(mmproj_path), n_threads, device,
                                        n_ctx or _CTX_PER_SEQUENCE * batch_size, 512, batch_size, flash_attn)
        except ValueError as e:
            if "device" in str(e):
                raise DeviceError(f"{e}. Use device='cpu' or 'auto', or install a GPU build "
                                  "(see the README: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install ...)") from None
            raise ModelLoadError(str(e)) from None
        except RuntimeError as e:
            raise ModelLoadError(f"{e}\nCheck that both files are complete GGUFs converted from the same "
                                 "LFM2-Audio checkpoint (`pylfm inspect FILE` shows what a file is).") from None
        finally:
            _drain_log()
        self.model_path = model_path
        self.mmproj_path = mmproj_path
        self.n_threads = n_threads
        self.batch_size = batch_size
        self.sample_rate: int = self._engine.sample_rate
        self.device: str = self._engine.device
        self.load_ms: float = self._engine.load_ms
        if _core.media_marker() != MEDIA_MARKER:  # pragma: no cover - guards a llama.cpp change
            raise ModelLoadError("this llama.cpp uses another media marker; reinstall pylfm")
        log.info("loaded %s + %s on %s in %.0f ms", model_path.name, mmproj_path.name, self.device, self.load_ms)

    def __repr__(self) -> str:
        return f"Model(model={str(self.model_path)!r}, mmproj={str(self.mmproj_path)!r}, device={self.device!r})"

    # ------------------------------------------------------------------ public API
    def transcribe(self, audio: AudioInput, *, sample_rate: Optional[int] = None, system: Optional[str] = ASR_SYSTEM_PROMPT,
                   prompt: Optional[str] = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int = 0, stream: bool = False,
                   return_segments: bool = False, window: float = DEFAULT_WINDOW_S,
                   batch_size: Optional[int] = None, ignore_eos: bool = False,
                   progress: bool = False) -> Union[Transcription, Iterator[str]]:
        """Transcribes one recording (or answers ``system``/``prompt`` about it).

        Args:
            audio: a file path (wav/flac/ogg/mp3), encoded bytes, a binary file object, or a
                numpy array of any int/float dtype, 1-D or 2-D (either channel order);
                arrays need ``sample_rate``.
            system: the system prompt; LFM2-Audio needs "Perform ASR." for transcription.
            prompt: optional user text after the audio (e.g. a question about it).
            max_new_tokens: generation limit per window.
            temperature: 0 is greedy and deterministic; otherwise sampled with
                ``top_k``/``top_p``/``seed``.
            stream: return an iterator of text pieces as they are decoded.
            return_segments: fill ``result.segments`` with timed windows (always filled;
                kept for faster-whisper-style call sites).
            window: recordings longer than this many seconds are split at pauses.
            batch_size: windows decoded together (default: the model's batch_size).
            ignore_eos: keep generating past end-of-generation (benchmarks, tests).
            progress: show a progress bar over audio seconds on stderr.

        Returns:
            A `Transcription` (``.text``, ``.tokens``, ``.segments``, ``.timings``), or an
            iterator of str pieces when ``stream=True`` (they join to the same text).
        """
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, ignore_eos)
        pcm = self._load(audio, sample_rate)
        windows = self._windows(pcm, window)
        requests = _requests(pcm, windows, system, prompt)
        if stream:
            return self._stream(requests, params, batch_size)
        bar = _bar(progress, len(pcm) / self.sample_rate)
        results = [r for _, batch in self._batches(requests, params, batch_size, bar) for r in batch]
        return self._combine(pcm, windows, results)

    def transcribe_segments(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                            system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None,
                            max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, top_k: int = 0,
                            top_p: float = 1.0, seed: int = 0, window: float = DEFAULT_WINDOW_S,
                            batch_size: Optional[int] = None,
                            progress: bool = False) -> Tuple[Iterator[Segment], TranscriptionInfo]:
        """Like faster-whisper's ``WhisperModel.transcribe``: returns a lazy iterator of
        `Segment` (decoded batch by batch as you iterate) and a `TranscriptionInfo`."""
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, False)
        pcm = self._load(audio, sample_rate)
        windows = self._windows(pcm, window)
        info = TranscriptionInfo(duration=len(pcm) / self.sample_rate, sample_rate=self.sample_rate,
                                 n_windows=len(windows), device=self.device, model=self.model_path.name,
                                 timings=Timings(load_ms=self.load_ms))
        requests = _requests(pcm, windows, system, prompt)
        bar = _bar(progress, info.duration)

        def segments() -> Iterator[Segment]:
            for start, results in self._batches(requests, params, batch_size, bar):
                for k, r in enumerate(results):
                    a, b = windows[start + k]
                    info.timings.add(_timings(r))
                    text = r["text"].strip()
                    if text:
                        yield Segment(id=start + k, start=a / self.sample_rate, end=b / self.sample_rate,
                                      text=text, tokens=list(r["tokens"]))
        return segments(), info

    def transcribe_batch(self, audios: Sequence[AudioInput], *, sample_rate: Optional[int] = None,
                         system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None,
                         max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, top_k: int = 0,
                         top_p: float = 1.0, seed: int = 0, window: float = DEFAULT_WINDOW_S,
                         batch_size: Optional[int] = None, progress: bool = False,
                         on_result: Optional[Callable[[int, Union[Transcription, Exception]], None]] = None
                         ) -> List[Union[Transcription, Exception]]:
        """Transcribes several recordings, decoding windows of all of them as parallel
        sequences. An input that cannot be read yields its exception in the returned
        list (and to ``on_result``) instead of stopping the others."""
        params = self._params(max_new_tokens, temperature, top_k, top_p, seed, False)
        loaded: List[Union[Tuple[np.ndarray, List[Tuple[int, int]]], Exception]] = []
        for a in audios:
            try:
                pcm = self._load(a, sample_rate)
                loaded.append((pcm, self._windows(pcm, window)))
            except (PylfmError, OSError, ValueError) as e:
                loaded.append(e)
        requests, owner = [], []
        for i, item in enumerate(loaded):
            if isinstance(item, Exception):
                continue
            pcm, windows = item
            requests += _requests(pcm, windows, system, prompt)
            owner += [i] * len(windows)
        outputs: List[Union[Transcription, Exception, None]] = [e if isinstance(e, Exception) else None for e in loaded]
        pending = {i: [] for i, item in enumerate(loaded) if not isinstance(item, Exception)}
        if on_result:
            for i, e in enumerate(outputs):
                if isinstance(e, Exception):
                    on_result(i, e)
        bar = _bar(progress, float(len(audios)), unit="file")

        def complete(i: int) -> None:
            pcm, windows = loaded[i]  # type: ignore[misc]
            outputs[i] = self._combine(pcm, windows, pending.pop(i))
            if bar:
                bar.update(1)
            if on_result:
                on_result(i, outputs[i])

        for i in [i for i, res in pending.items() if not loaded[i][1]]:  # silent files: nothing to decode
            complete(i)
        for start, results in self._batches(requests, params, batch_size, None):
            for k, r in enumerate(results):
                i = owner[start + k]
                pending[i].append(r)
                if len(pending[i]) == len(loaded[i][1]):  # type: ignore[index]
                    complete(i)
        if bar:
            bar.close()
        return outputs  # type: ignore[return-value]

    def encode_audio(self, audio: AudioInput, *, sample_rate: Optional[int] = None) -> np.ndarray:
        """The audio embeddings the language model receives: (n_tokens, n_embd) float32."""
        pcm = self._load(audio, sample_rate)
        try:
            return self._engine.encode_audio(pcm)
        finally:
            _drain_log()

    def first_logits(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                     system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None) -> np.ndarray:
        """Logits (n_vocab,) at the first generated position after the prompt and audio."""
        pcm = self._load(audio, sample_rate)
        try:
            return self._engine.first_logits([(build_prompt(system, prompt), [pcm])])
        finally:
            _drain_log()

    def prompt_tokens(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                      system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None) -> List[int]:
        """Token ids of the full prompt; the audio's positions are -1."""
        pcm = self._load(audio, sample_rate)
        return list(self._engine.prompt_tokens(build_prompt(system, prompt), [pcm]))

    def token_text(self, token: int) -> str:
        """The text of one token id (special tokens shown as themselves)."""
        return self._engine.token_piece(int(token), True).decode("utf-8", "replace")

    # ------------------------------------------------------------------ internals
    def _params(self, max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                ignore_eos: bool) -> "_core.SamplingParams":
        if int(max_new_tokens) <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        p = _core.SamplingParams()
        p.max_new_tokens, p.temperature, p.top_k, p.top_p = int(max_new_tokens), float(temperature), int(top_k), float(top_p)
        p.seed, p.ignore_eos = int(seed) & 0xFFFFFFFF, bool(ignore_eos)
        return p

    def _load(self, audio: AudioInput, sample_rate: Optional[int]) -> np.ndarray:
        return load_audio(audio, sample_rate=sample_rate, target_rate=self.sample_rate)

    def _windows(self, pcm: np.ndarray, window: float) -> List[Tuple[int, int]]:
        """Spans to decode: the whole clip when it fits one window (unless it is silent),
        else windows cut at pauses. Silence yields no window, so no hallucinated text."""
        if not 0 < window <= MAX_WINDOW_S:
            raise ValueError(f"window must be between 0 and {MAX_WINDOW_S:g} seconds (the audio encoder's "
                             f"limit for one piece of audio), got {window}")
        spans = split_windows(pcm, self.sample_rate, max_window_s=window)
        if not spans:
            return []
        if len(pcm) <= window * self.sample_rate:
            return [(0, len(pcm))]
        return spans

    def _batches(self, requests: List[Tuple[str, list]], params: "_core.SamplingParams", batch_size: Optional[int],
                 bar: Any) -> Iterator[Tuple[int, List[Dict[str, Any]]]]:
        size = max(1, min(batch_size or self.batch_size, self._engine.n_seq_max))
        try:
            for start in range(0, len(requests), size):
                chunk = requests[start:start + size]
                results = self._generate(chunk, params, None)
                for r in results:  # the sequences shared one generation loop
                    r["decode_ms"] /= len(results)
                if bar is not None:
                    bar.update(sum(len(r[1][0]) for r in chunk) / self.sample_rate)
                yield start, results
        finally:
            if bar is not None:
                bar.close()

    def _generate(self, requests, params, on_piece) -> List[Dict[str, Any]]:
        try:
            return self._engine.generate(requests, params, on_piece)
        except ValueError as e:
            raise PylfmError(str(e)) from None
        except RuntimeError as e:
            raise PylfmError(f"inference failed: {e}") from None
        finally:
            _drain_log()

    def _stream(self, requests, params, batch_size) -> Iterator[str]:
        """Runs the windows in a worker thread and yields pieces in order; windows are
        joined by a space. Closing the iterator early cancels the generation."""
        pieces: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        cancelled = threading.Event()

        def on_piece(_i: int, piece: str) -> bool:
            pieces.put(("piece", piece))
            return not cancelled.is_set()

        def work() -> None:
            try:
                for k, req in enumerate(requests):  # one window at a time keeps the order
                    if cancelled.is_set():
                        break
                    if k:
                        pieces.put(("piece", " "))
                    self._generate([req], params, on_piece)
                pieces.put(("end", None))
            except BaseException as e:  # handed to the consumer
                pieces.put(("error", e))

        def iterate() -> Iterator[str]:
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            try:
                while True:
                    kind, value = pieces.get()
                    if kind == "piece":
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        return
            finally:
                cancelled.set()
                worker.join()
        return iterate()

    def _combine(self, pcm: np.ndarray, windows: List[Tuple[int, int]], results: List[Dict[str, Any]]) -> Transcription:
        timings = Timings(load_ms=self.load_ms)
        segments, tokens = [], []
        for k, ((a, b), r) in enumerate(zip(windows, results)):
            timings.add(_timings(r))
            tokens += list(r["tokens"])
            text = r["text"].strip() if len(windows) > 1 else r["text"]
            if text.strip():
                segments.append(Segment(id=k, start=a / self.sample_rate, end=b / self.sample_rate, text=text.strip(),
                                        tokens=list(r["tokens"])))
        text = results[0]["text"] if len(results) == 1 else " ".join(s.text for s in segments)
        return Transcription(
            text=text, tokens=tokens, segments=segments, duration=len(pcm) / self.sample_rate, timings=timings,
            device=self.device,
            n_prompt_tokens=sum(r["n_prompt_tokens"] for r in results),
            n_audio_tokens=sum(r["n_audio_tokens"] for r in results),
            stop_reason=results[-1]["stop_reason"] if results else "silence")


# ---------------------------------------------------------------------- module helpers
_default_model: Optional[Model] = None
_default_key: Optional[tuple] = None
_default_lock = threading.Lock()


def transcribe(audio: AudioInput, model: Optional[Union[str, os.PathLike]] = None,
               mmproj: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> str:
    """Transcribes ``audio`` and returns the text, reusing one cached default `Model`
    (loaded on first use; reloaded when ``model``/``mmproj`` change).

    Keyword arguments go to `Model.transcribe` (``stream=True`` returns an iterator).
    """
    global _default_model, _default_key
    key = (model and os.fspath(model), mmproj and os.fspath(mmproj),
           os.environ.get("PYLFM_MODEL"), os.environ.get("PYLFM_MMPROJ"))
    with _default_lock:
        if _default_model is None or _default_key != key:
            _default_model = None
            _default_model = Model(model, mmproj)
            _default_key = key
        m = _default_model
    result = m.transcribe(audio, **kwargs)
    return result if kwargs.get("stream") else result.text  # type: ignore[union-attr]


def system_info() -> Dict[str, Any]:
    """The backends compiled into this build (CPU, CUDA, Metal, ...) and visible devices."""
    return dict(_core.system_info())


def _timings(r: Dict[str, Any]) -> Timings:
    return Timings(encode_ms=r["encode_ms"], prefill_ms=r["prefill_ms"], decode_ms=r["decode_ms"])


def _check_device(device: str) -> str:
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    d = device.strip().lower()
    kind, _, index = d.partition(":")
    if kind not in DEVICES or (index and not index.isdigit()):
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (optionally ':N', e.g. 'cuda:1')")
    return d


def _check_pair(model_path, mmproj_path) -> None:
    """Cheap checks before llama.cpp sees the files, so a wrong file gives a clear
    error rather than a crash deep inside the loader."""
    from .gguf_info import check_gguf

    m, p = check_gguf(model_path), check_gguf(mmproj_path)
    if m["kind"] == "mmproj" and p["kind"] == "model":
        raise ModelLoadError(f"model and mmproj are swapped: {model_path} is an mmproj and {mmproj_path} a text "
                             "model; pass model=<text model GGUF>, mmproj=<mmproj GGUF>")
    if m["kind"] != "model":
        raise ModelLoadError(f"{model_path} is not a text-model GGUF (it is a {m['kind']}); pass it as mmproj= or "
                             "give the LFM2 text model")
    if p["kind"] != "mmproj":
        raise ModelLoadError(f"{mmproj_path} is not an mmproj GGUF (it is a {p['kind']} of arch {p.get('arch')}); "
                             "pass the mmproj-*.gguf converted with the model")
    if m.get("arch") != "lfm2":
        raise ModelLoadError(f"{model_path} has architecture {m.get('arch')!r}; pylfm runs LFM2-Audio models "
                             "(architecture 'lfm2')")
    if not p.get("has_audio"):
        raise ModelLoadError(f"{mmproj_path} has no audio encoder (projector {p.get('projector')!r}); pass the "
                             "LFM2-Audio mmproj")
    if p.get("projector") not in (None, "lfm2a"):
        raise ModelLoadError(f"{mmproj_path} has projector {p.get('projector')!r}; LFM2-Audio needs 'lfm2a'")
    if m.get("n_embd") and p.get("n_embd") and m["n_embd"] != p["n_embd"]:
        raise ModelLoadError(f"model and mmproj do not belong together: the mmproj projects to {p['n_embd']} "
                             f"dimensions, the model expects {m['n_embd']}; use the mmproj converted with this model")


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _drain_log() -> None:
    for level, line in _core.pop_log():
        _llama_log.log(_LEVELS.get(level, logging.DEBUG), "%s", line)


def _requests(pcm: np.ndarray, windows: List[Tuple[int, int]], system: Optional[str],
              prompt: Optional[str]) -> List[Tuple[str, List[np.ndarray]]]:
    """One engine request (prompt text, [audio]) per window."""
    text = build_prompt(system, prompt)
    return [(text, [pcm[a:b]]) for a, b in windows]


def _bar(enabled: bool, total: float, unit: str = "s"):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 2), unit=unit, unit_scale=False, dynamic_ncols=True, leave=False,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} " + unit + " [{elapsed}<{remaining}]")
