"""Back end on BlinkDL's `rwkv` pip package (torch): `.pth` files of RWKV-4, 5, 6 and 7.

The package decides at import time whether it runs RWKV-7 (`RWKV_V7_ON`), uses its CUDA kernels
(`RWKV_CUDA_ON`) and TorchScript (`RWKV_JIT_ON`). We import its model module once per combination
under a private name, with those variables set only while it runs, so a v7 and a v6 model load one
after the other in one process and users never set any of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import threading
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from core.backends.base import Backend, BatchItemError, ModelInfo, check_wkv, file_identity
from core.backends.memory import GIB, check_fits, pth_needs
from core.backends.rwkv7_batch import Rwkv7Batch
from core.backends.threads import resolve_threads
from core.backends.tokenizer import WORLD_VOCAB_SIZE, world_tokenizer
from core.errors import ModelError

_DEVICES = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
_DTYPES = {"fp16", "fp32", "bf16", "fp16i8", "fp32i8", "bf16i8"}
_V7_DTYPES = {"fp16", "fp32", "bf16"}
_modules: dict[tuple[bool, bool, bool], ModuleType] = {}
_modules_lock = threading.Lock()
WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after two calls of a path
MAX_BATCH_V7 = 8  # RWKV-7 sequences decoded in one batched step (core/backends/rwkv7_batch.py)


def _model_module(v7: bool, cuda_on: bool, jit_on: bool) -> ModuleType:
    """`rwkv.model` imported afresh for one setting of its import-time switches."""
    key = (v7, cuda_on, jit_on)
    with _modules_lock:
        if key in _modules:
            return _modules[key]
        spec = importlib.util.find_spec("rwkv.model")
        if spec is None or spec.origin is None:
            raise ModelError("The rwkv package is not installed: pip install -r requirements.txt")
        name = f"_rwkv_model_v7{int(v7)}_cuda{int(cuda_on)}_jit{int(jit_on)}"
        mod_spec = importlib.util.spec_from_file_location(name, spec.origin)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        switches = {
            "RWKV_V7_ON": "1" if v7 else "0",
            "RWKV_CUDA_ON": "1" if cuda_on else "0",
            "RWKV_JIT_ON": "1" if jit_on else "0",
        }
        saved = {k: os.environ.get(k) for k in switches}
        os.environ.update(switches)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                mod_spec.loader.exec_module(module)
        except Exception as e:  # a CUDA kernel that fails to build, say
            raise ModelError(f"Could not prepare the rwkv package ({switches}): {e}") from e
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _modules[key] = module
        return module


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Open a `.pth` safely (no pickled code runs), memory-mapped, with a clear error."""
    if not path.is_file():
        raise ModelError(
            f"Model file not found: {path}. Put .pth or .gguf files in models/ or give a full path."
        )
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path.name} is not a PyTorch model file (not a zip archive: truncated, or another "
            "kind of file). Download it again or choose another file."
        )
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{path.name} was refused: it contains a pickled program, not only weights, and "
            "loading it would run code. Use a model from a source you trust, saved as plain "
            "weights."
        ) from e
    except Exception as e:
        raise ModelError(f"{path.name} could not be read as PyTorch weights: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path.name} does not hold a dictionary of tensors: not an RWKV model.")
    return sd


def detect_version(sd: dict[str, torch.Tensor], name: str = "model") -> int:
    """RWKV version from the tensor names, as BlinkDL's loaders do."""
    keys = set(sd)
    needed = {"emb.weight", "head.weight", "ln_out.weight", "blocks.0.ln1.weight"}
    if not needed <= keys:
        missing = ", ".join(sorted(needed - keys))
        raise ModelError(f"{name} is not an RWKV model (it lacks {missing}).")
    if any(k.endswith("att.r_k") for k in keys):
        return 7
    if any("time_maa" in k for k in keys):
        return 6
    if any(".ln_x." in k for k in keys):
        return 5
    if any(k.endswith("att.time_first") for k in keys):
        return 4
    raise ModelError(f"{name} looks like an RWKV model of a version this app does not know.")


def check_strategy(strategy: str, version: int) -> str:
    """Normalise and validate an rwkv strategy string for a model version."""
    strategy = " ".join(strategy.split())
    if not strategy:
        raise ModelError("The strategy is empty. Use 'cpu fp32', 'cpu bf16' or 'cuda fp16'.")
    segments = [s.strip() for s in strategy.split("->")]
    for seg in segments:
        parts = seg.split(" ")
        if len(parts) < 2 or not _DEVICES.match(parts[0]) or parts[1] not in _DTYPES:
            raise ModelError(
                f"Unknown strategy '{strategy}': each part must be a device (cpu, cuda) and a "
                "precision (fp32, bf16, fp16, fp16i8), such as 'cpu fp32' or 'cuda fp16i8 *10 -> "
                "cpu fp32'."
            )
        if len(parts) > 2 and not re.fullmatch(r"\*\d+\+?", parts[2]):
            raise ModelError(f"Unknown strategy '{strategy}': '{parts[2]}' should look like *10.")
    if version == 7:
        parts = segments[0].split(" ")
        if len(segments) > 1 or parts[1] not in _V7_DTYPES or parts[0] == "mps":
            raise ModelError(
                f"RWKV-7 models accept only 'cpu fp32', 'cpu bf16', 'cuda fp16', 'cuda bf16' or "
                f"'cuda fp32' in the rwkv package, not '{strategy}'. For int8 use a GGUF q8_0 "
                "file (Settings: convert) with the llama.cpp back end."
            )
    if "cuda" in strategy and not torch.cuda.is_available():
        raise ModelError(
            f"The strategy '{strategy}' needs a CUDA GPU, and this machine has none (or torch is "
            "a CPU build). Use 'cpu fp32' or 'cpu bf16'; for a GPU install a CUDA build of torch."
        )
    if "mps" in strategy and not torch.backends.mps.is_available():
        raise ModelError(f"The strategy '{strategy}' needs Apple's MPS, which is not available.")
    return strategy


class RwkvBackend(Backend):
    """A `.pth` model loaded through the rwkv package."""

    def __init__(
        self,
        path: str | Path,
        strategy: str = "cpu fp32",
        cuda_on: bool = False,
        jit_on: bool = True,
        n_threads: int | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.set_threads(n_threads)
        p = Path(path).expanduser()
        if p.suffix != ".pth" and p.with_suffix(".pth").is_file():
            p = p.with_suffix(".pth")
        sd = read_weights(p)
        version = detect_version(sd, p.name)
        strategy = check_strategy(strategy, version)
        n_params = int(sum(t.numel() for t in sd.values()))
        n_vocab, n_embd = (int(x) for x in sd["emb.weight"].shape)
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        del sd
        check_fits(
            pth_needs(n_params, strategy),
            f"{p.name} in '{strategy}'",
            f"Convert it to GGUF q8_0 in Settings (about {n_params / GIB * 1.07:.1f} GB, read "
            "from the file as it runs) and load that, choose a smaller model, or close other "
            "programs.",
        )
        if n_vocab != WORLD_VOCAB_SIZE:
            raise ModelError(
                f"{p.name} has a vocabulary of {n_vocab} tokens; this app supports RWKV World "
                f"models ({WORLD_VOCAB_SIZE} tokens). Older Pile models are not supported."
            )
        self.cuda = "cuda" in strategy
        cuda_on = cuda_on and self.cuda
        module = _model_module(version == 7, cuda_on, jit_on)
        # the package also reads these while loading and running: keep them at this model's values
        os.environ["RWKV_CUDA_ON"] = "1" if cuda_on else "0"
        os.environ["RWKV_JIT_ON"] = "1" if jit_on else "0"
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                if version == 7:  # the v7 class appends ".pth" itself
                    model = module.RWKV(str(p.with_suffix("")), strategy)
                else:
                    model = module.RWKV(str(p), strategy, verbose=False)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{p.name} could not be loaded with '{strategy}': {e}") from e
        self.model: Any = model
        self.version = version
        self.tokenizer = world_tokenizer()
        self.info = ModelInfo(
            path=str(p),
            backend="rwkv",
            arch=f"rwkv{version}",
            n_layer=n_layer,
            n_embd=n_embd,
            n_vocab=n_vocab,
            n_params=n_params,
            strategy=strategy,
            load_s=time.perf_counter() - t0,
            identity=file_identity(p, "rwkv", strategy),
            extra={"threads": self.n_threads},
        )
        self._zero = self._make_zero_state()
        self.state_format = "rwkv tensors v1"  # layout of state_to_bytes
        # RWKV-7 decodes several sequences in one step; older versions one at a time
        self._batch = Rwkv7Batch(model) if version == 7 and Rwkv7Batch.supports(model) else None
        self.max_batch = MAX_BATCH_V7 if self._batch is not None else 1
        self._warm_up()
        self.info.load_s = time.perf_counter() - t0

    def _warm_up(self) -> None:
        """Run both of the package's paths (a sequence, one token) a few times while loading.
        With RWKV_JIT_ON its functions are TorchScript, which profiles them on their first calls
        and optimises them on later ones: without this, the first reply after a start (the
        resume of a chat after a restart) paid for it, its prefill 3.5 times slower than the
        next ones and its first steps 2 times. Results are not kept (forward leaves states as
        they were)."""
        prompt = self.tokenize("User: Hello! How are you?\n\nAssistant:")
        state = self.initial_state()
        for _ in range(WARM_UP_RUNS):
            _, after = self.forward(prompt, state)
            self.forward(prompt[:1], after)

    def set_threads(self, n: int | None) -> None:
        """Threads of torch's CPU work (None: the default). torch keeps the count per calling
        thread: call it on the thread that runs the model (the model thread in the app)."""
        self.n_threads = resolve_threads(n)
        torch.set_num_threads(self.n_threads)
        if hasattr(self, "info"):
            self.info.extra["threads"] = self.n_threads

    # ---- tokens
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, tokens: list[int]) -> bytes:
        return self.tokenizer.decode_bytes(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def eos_token(self) -> int | None:
        return None  # World models end a turn with a blank line, which the stop strings catch

    # ---- states
    def _make_zero_state(self) -> list[torch.Tensor]:
        m = self.model
        if self.version == 7:
            dtype, dev = m.z["emb.weight"].dtype, m.z["emb.weight"].device
            C, N = m.n_embd, m.head_size
            state: list[torch.Tensor] = []
            for _ in range(m.n_layer):
                state += [
                    torch.zeros(C, dtype=dtype, device=dev),
                    torch.zeros((C // N, N, N), dtype=torch.float32, device=dev),
                    torch.zeros(C, dtype=dtype, device=dev),
                ]
            return state
        args = m.args
        state = []
        for i in range(args.n_layer):
            dd = m.strategy[i]

            def z(*shape: int, dt: torch.dtype = dd.atype, dev: Any = dd.device) -> torch.Tensor:
                return torch.zeros(*shape, dtype=dt, device=dev)

            if self.version == 4:
                f32 = torch.float32
                state += [z(args.n_embd), z(args.n_att, dt=f32), z(args.n_att, dt=f32)]
                state += [z(args.n_att, dt=f32) - 1e30, z(args.n_embd)]
            else:
                hs = args.n_att // args.n_head
                if args.time_state:
                    w = m.w[f"blocks.{i}.att.time_state"]
                    kv = w.transpose(1, 2).to(dtype=torch.float, device=dd.device).contiguous()
                else:
                    kv = z(args.n_head, hs, hs, dt=torch.float32)
                state += [z(args.n_embd), kv, z(args.n_embd)]
        return state

    def initial_state(self) -> list[torch.Tensor]:
        return self.copy_state(self._zero)

    def wkv_shape(self) -> tuple[int, int, int] | None:
        if self.version == 4:  # RWKV-4's state has no matrices
            return None
        heads, size, _ = self._zero[1].shape
        return self.info.n_layer, int(heads), int(size)

    def state_with_wkv(self, wkv: list[np.ndarray]) -> list[torch.Tensor]:
        """A state-tuning file's state: its [head, value, key] matrices are the package's RWKV-7
        layout as they are; RWKV-5/6 states are [head, key, value], so they are transposed,
        as the package does with a `time_state` merged into a model file."""
        check_wkv(wkv, self.wkv_shape())
        state = self.initial_state()
        for i, w in enumerate(wkv):
            t = torch.from_numpy(np.array(w, dtype=np.float32))
            if self.version != 7:
                t = t.transpose(1, 2)
            ref = state[i * 3 + 1]
            state[i * 3 + 1] = t.to(dtype=ref.dtype, device=ref.device).contiguous()
        return state

    def copy_state(self, state: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.clone() for t in state]

    def forward(
        self, tokens: list[int], state: list[torch.Tensor]
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        # the package assigns into the list it is given, and its CUDA kernels write into the
        # tensors: give it a list of its own, with cloned tensors on a GPU
        s = [t.clone() for t in state] if self.cuda else list(state)
        logits = None
        for i in range(0, len(tokens), 256):  # chunks: identical results, bounded memory
            logits, s = self.model.forward(tokens[i : i + 256], s)
        assert logits is not None
        return logits.float().cpu().numpy(), s

    def forward_batch(
        self, items: list[tuple[list[int], list[torch.Tensor], bool]], threads: int | None = None
    ) -> list[tuple[np.ndarray, list[torch.Tensor]]]:
        """Feed several sequences (`Backend.forward_batch`). On RWKV-7 the items of one token
        (decode steps) run together in one batched step; items of several tokens (prompt
        chunks) run through the package's own forward, one at a time, in the same call. An
        item that fails its checks raises BatchItemError before anything ran. `threads` is
        ignored: this back end has no `wide_threads` (its batched step met its goals on the
        model's own count, and torch's thread count is one setting for the whole process)."""
        if len(items) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} sequences in one batch")
        for i, (tokens, state, _consume) in enumerate(items):
            problem = self._check_item(tokens, state)
            if problem is not None:
                raise BatchItemError(i, problem)
        out: list[tuple[np.ndarray, list[torch.Tensor]] | None] = [None] * len(items)
        steps = [i for i, (tokens, _, _) in enumerate(items) if len(tokens) == 1]
        if self._batch is not None and len(steps) > 1:
            logits, states = self._batch.forward(
                [items[i][0][0] for i in steps], [items[i][1] for i in steps]
            )
            rows = logits.float().cpu().numpy()
            for j, i in enumerate(steps):
                out[i] = (rows[j].copy(), states[j])  # a row of its own, as forward gives
        for i, (tokens, state, _consume) in enumerate(items):
            if out[i] is None:
                out[i] = self.forward(tokens, state)
        return [o for o in out if o is not None]

    def _check_item(self, tokens: list[int], state: Any) -> Exception | None:
        """Why a batch item cannot run (None: it can)."""
        if not tokens:
            return ValueError("forward needs at least one token")
        n_vocab = self.info.n_vocab
        if any(not isinstance(t, int | np.integer) or not 0 <= t < n_vocab for t in tokens):
            return ModelError(f"A token id is outside the vocabulary of {n_vocab}.")
        if not isinstance(state, list) or len(state) != len(self._zero):
            return ModelError("This state does not belong to this model (wrong layout).")
        return None

    def state_to_bytes(self, state: list[torch.Tensor]) -> bytes:
        head = []
        chunks = []
        for t in state:
            t = t.detach().cpu().contiguous()
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            head.append([str(t.dtype).removeprefix("torch."), list(t.shape)])
            chunks.append(raw.numpy().tobytes())
        header = json.dumps(head).encode()
        return len(header).to_bytes(4, "little") + header + b"".join(chunks)

    def state_from_bytes(self, data: bytes) -> list[torch.Tensor]:
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4 : 4 + n])
        buf = io.BytesIO(data[4 + n :])
        out = []
        for (dtype_name, shape), ref in zip(head, self._zero, strict=True):
            dtype = getattr(torch, dtype_name)
            count = int(np.prod(shape)) if shape else 1
            if dtype == torch.bfloat16:
                arr = np.frombuffer(buf.read(count * 2), dtype=np.int16)
                t = torch.from_numpy(arr.copy()).view(torch.bfloat16)
            else:
                npd = torch.empty(0, dtype=dtype).numpy().dtype
                arr = np.frombuffer(buf.read(count * npd.itemsize), dtype=npd)
                t = torch.from_numpy(arr.copy())
            out.append(t.reshape(shape).to(ref.device))
        return out

    def close(self) -> None:
        self.model = None
