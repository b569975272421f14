"""Speech to text with PocketSphinx (its bundled US English acoustic model,
language model and dictionary).

PocketSphinx holds the GIL while decoding (measured: a Python thread spinning
beside ``Decoder.process_raw`` runs ~180× slower), so decoding runs in child
processes (running :func:`_serve_stdio`, see :class:`Recognizer`) that
load the model once each at start-up.

Decoding is done per committed turn on the whole utterance
(``full_utt=True``, so cepstral mean normalisation sees all of it); streaming
partial decoding was tried and gives much worse transcripts.
Search limits (``maxhmmpf=10000``, ``maxwpf=10``) cut decode time about 3×
against the defaults with the same or better transcript on ``jfk.flac``
(measured real-time factor ≈ 0.2 on one core).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import queue
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["STT_RATE", "Recognizer", "decode", "shared_recognizer"]

STT_RATE = 16000
"""Sample rate PocketSphinx's default model expects, in Hz."""

DECODER_OPTIONS: dict[str, Any] = {"loglevel": "FATAL", "maxhmmpf": 10000, "maxwpf": 10}

_decoder: Any = None  # one per process


def _load_decoder() -> None:
    global _decoder
    if _decoder is None:
        from pocketsphinx import Decoder

        _decoder = Decoder(**DECODER_OPTIONS)


def decode(pcm: bytes, rate: int) -> str:
    """Transcribe one utterance of PCM16 mono at ``rate`` Hz; blocking.

    Returns the lower-case hypothesis, ``""`` when nothing was recognised.
    Runs in whatever process calls it (loads the model on first use).
    """
    from voxgate.voice.audio import resample_pcm16

    _load_decoder()
    pcm16k = resample_pcm16(pcm, rate, STT_RATE)
    if len(pcm16k) < STT_RATE // 5:  # under 100 ms: nothing to hear
        return ""
    _decoder.start_utt()
    try:
        _decoder.process_raw(pcm16k, no_search=False, full_utt=True)
    finally:
        _decoder.end_utt()
    hyp = _decoder.hyp()
    return " ".join(hyp.hypstr.split()) if hyp is not None else ""


class _Worker:
    """One child process running :func:`_serve_stdio`, spoken to over its
    stdin/stdout pipes (blocking; used from one thread at a time).

    Request: ``rate`` (u32 LE, Hz), ``n`` (u32 LE), then ``n`` bytes of PCM16.
    Reply: ``n`` (u32 LE) then ``n`` bytes of UTF-8 transcript. At start-up
    the child writes one ``R`` byte once the model is loaded.
    """

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from voxgate.voice.stt import _serve_stdio; _serve_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        if self.proc.stdout.read(1) != b"R":  # type: ignore[union-attr]
            self.close()
            raise RuntimeError("speech recognizer worker failed to start")

    def decode(self, pcm: bytes, rate: int) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(struct.pack("<II", rate, len(pcm)) + pcm)
        self.proc.stdin.flush()
        header = self.proc.stdout.read(4)
        if len(header) < 4:
            raise RuntimeError("speech recognizer worker died")
        (n,) = struct.unpack("<I", header)
        return self.proc.stdout.read(n).decode()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]  # EOF ends the worker
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()  # type: ignore[union-attr]


def _serve_stdio() -> None:
    """Worker main loop (the child process's whole program)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    _load_decoder()
    stdout.write(b"R")
    stdout.flush()
    while True:
        header = stdin.read(8)
        if len(header) < 8:
            return
        rate, n = struct.unpack("<II", header)
        pcm = stdin.read(n)
        try:
            text = decode(pcm, rate).encode()
        except Exception:  # keep serving; an empty transcript is reported
            text = b""
        stdout.write(struct.pack("<I", len(text)) + text)
        stdout.flush()


class Recognizer:
    """Runs :func:`decode` off the event loop, in ``workers`` child processes
    (each loads the model once). A thread per request borrows an idle worker
    and blocks on its pipes, so this works from any event loop.

    Not ``multiprocessing``: its ``spawn``/``forkserver`` methods re-import
    the caller's ``__main__`` (breaking unguarded scripts), and ``fork`` is
    unsafe in a process running onnxruntime and event-loop threads.

    Args:
        workers: decoding processes; 0 decodes in a thread of this process
            (holds the GIL: for debugging only).
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the workers and wait until each has loaded the model
        (blocking: call it from a thread). Idempotent."""
        with self._lock:
            if self._pool is not None:
                return
            if self.workers <= 0:
                _load_decoder()
            else:
                with concurrent.futures.ThreadPoolExecutor(self.workers) as starter:
                    workers = list(starter.map(lambda _: _Worker(), range(self.workers)))
                for w in workers:
                    self._all.append(w)
                    self._idle.put(w)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max(1, self.workers), thread_name_prefix="voxgate-stt"
            )
            atexit.register(self.shutdown)

    def _decode(self, pcm: bytes, rate: int) -> str:
        if self.workers <= 0:
            return decode(pcm, rate)
        worker = self._idle.get()
        try:
            text = worker.decode(pcm, rate)
        except Exception:
            worker.close()
            with self._lock:
                self._all.remove(worker)
                worker = _Worker()  # replace the dead worker
                self._all.append(worker)
            raise
        finally:
            self._idle.put(worker)
        return text

    async def transcribe(self, pcm: bytes, rate: int) -> str:
        """Transcribe PCM16 mono at ``rate`` Hz.

        Raises:
            RuntimeError: not started, or the worker died (it is replaced).
        """
        if self._pool is None:
            raise RuntimeError("recognizer not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._decode, pcm, rate)

    def shutdown(self) -> None:
        """Stop the workers (also run at interpreter exit)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            for w in self._all:
                w.close()
            self._all.clear()
            self._idle = queue.Queue()


_shared: Recognizer | None = None
_shared_lock = threading.Lock()


def shared_recognizer(workers: int = 1) -> Recognizer:
    """The process-wide recognizer (models load once per process, however many
    providers or sessions use them). ``workers`` counts only on first call."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Recognizer(workers)
        return _shared
