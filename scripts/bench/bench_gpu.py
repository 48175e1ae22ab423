"""GPU rows of the speed benchmarks (issues #5, #24): the llama.cpp P-RGE step on CUDA with the
step's perturbations on K contexts at once (`--parallel`) against the former path (one context,
an adapter file loaded per perturbation), at q = 1 and 4 and batch 16 and 64, on the 135M, 1.1B
and 7B shapes; the same step on the machine's CPU split into K contexts x T threads; and the
torch engine's one batched forward of all 2q perturbations against 2q sequential forwards.

The models are random-weight GGUFs of real shapes (`prge_gguf/synthetic.py`): speed only,
never accuracy. Two commands, both from the repository root:

    # here (network): the carry folder: llama-cpp-python's sdist trimmed to ~8 MB, the wheels
    # the GPU machine lacks (gguf, diskcache) and SmolLM2's tokenizer metadata (vocab.gguf)
    python scripts/bench/bench_gpu.py --prepare-carry carry-gpu

    # on the GPU machine (no network): installs the llama_cpp package a former run saved in
    # carry-gpu/whl (else builds it for CUDA sm_90 from the carried sdist, ~160-200 s on 16
    # cores; --build forces that), then measures
    python3 scripts/bench/bench_gpu.py --carry carry-gpu --out-dir $OUT --keep-torch bench/gpu.json \
        --torch-presets '' --warmup 1 --min-steps 3 --max-s 0.8

It prints a table and writes OUT_DIR/gpu.json and OUT_DIR/gpu.md (the card, CPU, threads,
llama.cpp build and commit inside). A fresh build also leaves the installed package in
OUT_DIR as `llama_cpp-*-cuda-sm90.tar.xz.partNN` (15 MiB parts, ~27 MiB) for CARRY/whl.
`--budget-s` stops starting new measurements once that much time has gone, so a run always
ends with its files; `--keep-torch` copies an earlier run's torch rows. Locally, without a
GPU: `--llama-backends cpu --torch-device cpu` checks the logic.

Why libstdc++ is loaded first (`activate_site`): on the GPU image every model load crashed
(SIGSEGV right after `init_tokenizer`, CPU and CUDA alike). libggml-cuda.so, as the CUDA 13
toolchain there links it, holds and exports its own static copy of part of libstdc++
(std::locale and ~450 GNU-unique symbols). numpy, imported before llama_cpp (prge_gguf.synthetic,
gguf), loads the system libstdc++.so.6 with its C++ core; unique symbols then bind process-
wide to that copy while libggml-cuda keeps its own locale state, and the vocabulary's first
std::locale/regex use crashes (a minimal load that imports llama_cpp before numpy works).
Loading libstdc++.so.6 RTLD_GLOBAL before llama_cpp makes its definitions interpose every
copy: loads and steps then run. Builds use the system gcc/g++ (`SYSTEM_COMPILERS`): the
image's default /opt/gcc/bin/g++ links libstdc++ statically, so libllama and libggml-base
had no libstdc++.so.6 dependency at all; that alone did not stop the crash.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import hashlib
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench"), str(ROOT / "scripts")]

from bench_common import git_commit  # noqa: E402
from bench_common import machine as common_machine  # noqa: E402
from build_llama_routing import apply_patch  # noqa: E402

LLAMA_VERSION = "0.3.36"  # pyproject.toml's pin
SDIST = f"llama_cpp_python-{LLAMA_VERSION}"
TRIMMED = f"{SDIST}-trim.tar.gz"
# What a CUDA build of the library never reads: model/vocab files, docs, tests, the git
# history, the tools/examples (off unless llama.cpp is the top-level project; mtmd is off
# with LLAVA_BUILD) and the other ggml backends (each added only when GGML_<NAME> is on).
TRIM = [f"vendor/llama.cpp/{d}" for d in (
    "models", "docs", "tests", "tools", "examples", "pocs", "benches", "media", "gguf-py",
    "conversion", "app", "ci", "skills")] + [f"vendor/llama.cpp/ggml/src/ggml-{b}" for b in (
        "vulkan", "sycl", "opencl", "hexagon", "metal", "et", "webgpu", "openvino", "cann",
        "virtgpu", "zdnn", "zendnn", "musa", "hip", "blas", "rpc")] + [
    ".git", "docs", "examples", "tests", "docker"]
# sm_90 only (H100/H200); no flash-attention kernels (the engine turns flash attention off),
# no NCCL (one GPU), no multimodal library.
CMAKE_ARGS = ("-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF "
              "-DLLAVA_BUILD=OFF")
# Not the image's default /opt/gcc/bin/{gcc,g++} (see the module docstring).
SYSTEM_COMPILERS = {"CC": "/usr/bin/gcc", "CXX": "/usr/bin/g++"}
# Missing on the GPU machine's image, or (transformers: 5.17 there) too old: torch_engine.MIN_TRANSFORMERS.
PURE_WHEELS = ("gguf==0.19.0", "diskcache==5.6.3", "transformers==5.24.0")
SITE = Path("/tmp/prge-gpu-site")
PART = 15 * 2**20
LIB_ARCHIVE = f"llama_cpp-{LLAMA_VERSION}-cuda-sm90.tar.xz"  # the built package, for later runs


def log(msg: str) -> None:
    """A progress line on stdout, flushed (the run's log is what the command tees)."""
    print(msg, flush=True)


# -- here: the carry folder ---------------------------------------------------------------------
def prepare_carry(dest: Path, sdist: Path | None) -> None:
    """Trimmed sdist, the missing pure-Python wheels for Python 3.12, vocab.gguf, commit.txt."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    if sdist is None:
        cache = dest / "cache"
        sdist = cache / f"{SDIST}.tar.gz"
        if not sdist.exists():
            subprocess.run([*pip, "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_VERSION}",
                            "-d", str(cache)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / SDIST
        for rel in TRIM:
            shutil.rmtree(src / rel, ignore_errors=True)
        with tarfile.open(dest / TRIMMED, "w:gz") as tar:
            tar.add(src, arcname=SDIST)
    subprocess.run([*pip, "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(dest / "whl"), *PURE_WHEELS],
                   check=True)
    from prge_gguf.synthetic import export_vocab

    export_vocab(dest / "vocab.gguf")
    (dest / "commit.txt").write_text(git_commit() + "\n")
    for p in sorted(dest.rglob("*")):
        if p.is_file() and "cache" not in p.parts:
            log(f"{p}  {p.stat().st_size / 2**20:.1f} MiB")


# -- the GPU machine: install or build llama-cpp-python ---------------------------------------
def setup(carry: Path, out_dir: Path, jobs: int, build: bool = False, patch: Path | None = None) -> dict:
    """Install the carried wheels into SITE, and llama-cpp-python: from a package archive a
    former run left (CARRY/whl parts of the archive named for `patch`) unless `build`, else built
    from the trimmed sdist with `patch` applied."""
    info: dict = {"cmake_args": CMAKE_ARGS, "patch": patch.name if patch else None}
    wheels = [str(p) for p in sorted((carry / "whl").glob("*.whl"))]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(SITE), *wheels], check=True)
    archive = lib_archive(patch)
    parts = sorted((carry / "whl").glob(f"{archive}.part*"))
    if parts and not build:
        with tempfile.TemporaryFile() as fh:
            for p in parts:
                fh.write(p.read_bytes())
            fh.seek(0)
            with tarfile.open(fileobj=fh, mode="r:xz") as tar:
                tar.extractall(SITE, filter="tar")
        info["llama_from"] = f"{archive} carried in {len(parts)} parts (built by an earlier run)"
    else:
        wheel, info["build_s"] = _build(carry / TRIMMED, jobs, out_dir, patch)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(SITE), str(wheel)], check=True)
        info["llama_from"] = f"{wheel.name} built here"
        _save_package(out_dir, archive)
    libs = sorted((SITE / "llama_cpp" / "lib").glob("*.so*"))
    info["libs_mib"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in libs if not p.is_symlink()}
    log(f"installed: {info['libs_mib']}")
    activate_site()
    return info


def lib_archive(patch: Path | None) -> str:
    """The name of the saved package: LIB_ARCHIVE, with the patch's name and a hash of its
    text for a patched build (an edited patch is built anew)."""
    if patch is None:
        return LIB_ARCHIVE
    digest = hashlib.sha256(patch.read_bytes()).hexdigest()[:12]
    return LIB_ARCHIVE.replace(".tar.xz", f"-{patch.stem}-{digest}.tar.xz")


def _save_package(out_dir: Path, name: str) -> None:
    """The installed llama_cpp package, its library copies turned back into symlinks, as
    tar.xz pieces of 15 MiB in `out_dir` (if at most 45 MiB: what the device tool returns)."""
    lib = SITE / "llama_cpp" / "lib"
    for so in sorted(lib.glob("*.so.*.*")):  # libX.so.0.25.3 is the file; libX.so, libX.so.0 copies
        stem = so.name.split(".so.")[0] + ".so"
        for alias in (lib / stem, lib / (stem + "." + so.name.split(".so.")[1].split(".")[0])):
            if alias.exists() and not alias.is_symlink():
                alias.unlink()
                alias.symlink_to(so.name)
    archive = Path(tempfile.gettempdir()) / name
    subprocess.run(["tar", "-C", str(SITE), "-cf", str(archive), "-I", "xz -T0", "llama_cpp"], check=True)
    size = archive.stat().st_size
    log(f"{name}: {size / 2**20:.1f} MiB")
    if size <= 45 * 2**20:
        data = archive.read_bytes()
        for k in range(0, len(data), PART):
            (out_dir / f"{name}.part{k // PART:02d}").write_bytes(data[k : k + PART])


def activate_site() -> None:
    """Import from SITE, with the CUDA libraries the llama.cpp build needs loadable and
    libstdc++ first in the process's global symbol scope (see the module docstring)."""
    ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    sys.path.insert(0, str(SITE))
    _preload_cuda_libs(SITE / "llama_cpp" / "lib")


def _build(sdist: Path, jobs: int, out_dir: Path, patch: Path | None) -> tuple[Path, float]:
    wheel_dir = Path(tempfile.mkdtemp(prefix="prge-wheel-"))
    if patch is not None:
        src = Path(tempfile.mkdtemp(prefix="prge-src-"))
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
        sdist = src / SDIST
        apply_patch(sdist, patch)
    compilers = {k: v for k, v in SYSTEM_COMPILERS.items() if Path(v).exists()}
    cmake_args = CMAKE_ARGS
    if "CXX" in compilers:
        cmake_args += f" -DCMAKE_CUDA_HOST_COMPILER={compilers['CXX']}"
    env = dict(os.environ, CMAKE_ARGS=cmake_args, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs), **compilers)
    log(f"building {sdist.name} with CMAKE_ARGS='{cmake_args}', {compilers or 'default compilers'}, "
        f"{jobs} jobs")
    t0 = time.perf_counter()
    build_log = Path(tempfile.gettempdir()) / "prge-llama-build.log"
    with build_log.open("w") as fh:
        rc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                             "--no-index", "-w", str(wheel_dir), str(sdist)], env=env, stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = build_log.read_text(errors="replace").splitlines()[-60:]
        (out_dir / "gpu-build-fail.log").write_text("\n".join(tail) + "\n")
        log("\n".join(tail))
        raise RuntimeError(f"llama-cpp-python build failed (rc {rc}) after {seconds:.0f} s")
    wheel = next(wheel_dir.glob("*.whl"))
    log(f"built {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB) in {seconds:.0f} s")
    return wheel, seconds


def _preload_cuda_libs(lib_dir: Path) -> None:
    """Load the CUDA runtime libraries libggml-cuda needs where the loader would not find them
    (a CUDA toolkit installed from pip wheels is not on the library path)."""
    cuda_lib = next(iter(lib_dir.glob("libggml-cuda.so*")), None)
    if cuda_lib is None:
        return
    ldd = subprocess.run(["ldd", str(cuda_lib)], capture_output=True, text=True).stdout
    missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
    if not missing:
        return
    roots = [Path(p) for p in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib")]
    try:
        import nvidia

        roots += [Path(p) for p in nvidia.__path__]
    except ImportError:
        pass
    for name in missing:
        found = next((p for root in roots if root.is_dir() for p in root.rglob(name)), None)
        log(f"preloading {name}: {found}")
        if found:
            ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)


# -- what the numbers ran on ------------------------------------------------------------------
def machine(carry: Path | None) -> dict:
    """bench_common's machine record, plus the torch/CUDA versions and the commit the carry was made at."""
    import torch
    import transformers

    sent = carry / "commit.txt" if carry else None
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.splitlines() \
        if shutil.which("nvcc") else []
    return {**common_machine(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__, "nvcc": nvcc[-1:],
            "carry_commit": sent.read_text().strip() if sent and sent.exists() else None}


# -- llama.cpp: the P-RGE training step, CPU vs CUDA -------------------------------------------
class OneAtATime:
    """The engine's former path, for comparison: each perturbation written to a GGUF file, loaded
    and set on the one evaluation context (llama.cpp re-reserving its scheduler), in turn."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def score_each(self, requests, adapters):
        """`score` of each adapter in turn."""
        return [self.engine.score(requests, [(a, 1.0)]) for a in adapters]


def _gpu_mem_used_mib() -> float | None:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout if shutil.which("nvidia-smi") else ""
    return float(out.split()[0]) if out.strip() else None


def llama_step_rows(model: Path, preset: str, backend: str,
                    variants: list[tuple[int, int, int, int | None, bool]], warmup: int, min_steps: int,
                    max_s: float, profile: set[tuple[int, int, int]]) -> list[dict]:
    """Median wall time of the P-RGE step (train's work: the 2q perturbed losses on a batch of
    SST-2 examples through the engine, then the update) for each variant (q, batch size, K
    contexts, threads in all: None for the engine's default, adapter routing); K = 0 is
    `OneAtATime`. The context is fitted to the batch as `train` fits it. A routed variant also
    records how far its log-probs are from the unrouted ones. Variants in `profile` (q, batch, K)
    also print a profile of their host time."""
    from prge_gguf.data import decode_size
    from prge_gguf.engine.llama import LlamaEngine
    from prge_gguf.settings import CPU_MAX_N_CTX, GPU_MAX_N_CTX
    from prge_gguf.tasks import builtin_task, tokenize

    rows = []
    for threads in dict.fromkeys(v[3] for v in variants):  # one model load per thread count
        t_load = time.perf_counter()
        with LlamaEngine(model, n_gpu_layers=-1 if backend == "cuda" else 0, threads=threads) as engine:
            load_s = time.perf_counter() - t_load
            task = builtin_task("sst2")
            train = [tokenize(engine, ex) for ex in task.examples(task.train_file)]
            for q, batch_size, k, _, routed in (v for v in variants if v[3] == threads):
                engine.set_parallel(max(1, k))
                engine.set_routing(routed)
                engine.set_context(decode_size(train, [], batch_size, GPU_MAX_N_CTX if backend == "cuda"
                                               else CPU_MAX_N_CTX))
                rows.append(_step_row(engine, OneAtATime(engine) if k == 0 else engine, train, q, batch_size,
                                      warmup, min_steps, max_s, (q, batch_size, k) in profile) | {
                    "model": preset, "type": _file_type(model), "backend": backend,
                    "n_gpu_layers": -1 if backend == "cuda" else 0, "parallel": k, "routing": routed,
                    "threads": engine.threads, "load_s": load_s,
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
                r = rows[-1]
                if routed:
                    r["routed_logprob_diff"] = _routing_diff(engine, train, q, batch_size)
                log(f"llama {preset} {backend:4} q={q} batch={batch_size} K={_k_label(r)} "
                    f"({engine.threads} threads): {r['step_s_median']:.4f} s/step (median of "
                    f"{r['steps_timed']}; scoring {r['scoring_s_median']:.4f}), {r['perturbations_s']:.1f} "
                    f"perturbations/s, parts {r['engine_parts_s']}, loss@1 {r['loss_step1']:.4f}")
    return rows


def _routing_diff(engine, train: list, q: int, batch_size: int) -> float:
    """The largest |log-prob| difference between the 2q perturbations of a step on the first
    batch scored with adapter routing and without (engine left routing)."""
    import numpy as np

    from prge_gguf.lora import init_lora_fa
    from prge_gguf.targets import TARGETS
    from prge_gguf.train import TrainConfig

    cfg = TrainConfig(q=q, batch_size=batch_size)
    base = init_lora_fa(engine.header, list(TARGETS), cfg.rank, cfg.alpha, seed=cfg.seed)
    base = base.with_b({n: np.random.default_rng(1).normal(0, 0.02, b.shape).astype(np.float32)
                        for n, b in base.b.items()})  # B = 0 would hide a misrouted adapter
    adapters = _step_adapters(base, q, cfg.eps, cfg.seed)
    requests = [r for ex in train[:batch_size] for r in ex.requests]
    routed = engine.score_each(requests, adapters)
    engine.set_routing(False)
    plain = engine.score_each(requests, adapters)
    engine.set_routing(True)
    return _max_abs_diff(routed, plain)


def _step_adapters(base, q: int, eps: float, seed: int) -> list:
    """The 2q adapters of step 0 exactly as pair_loss_fn builds them: B +/- eps z_i."""
    import numpy as np

    from prge_gguf.prge import direction

    shapes = {n: b.shape for n, b in base.b.items()}
    adapters = []
    for i in range(q):
        z = direction(shapes, seed, 0, i)
        for sign in (1, -1):
            adapters.append(base.with_b({n: base.b[n] + np.float32(sign * eps) * z[n] for n in base.names}))
    return adapters


def _max_abs_diff(got: list, want: list) -> float:
    """The largest |difference| between two `score_each` results."""
    import numpy as np

    return max(float(np.abs(a - b).max()) for sg, sw in zip(got, want, strict=True)
               for rg, rw in zip(sg, sw, strict=True) for a, b in zip(rg, rw, strict=True))


def _k_label(row: dict) -> str:
    """A row's K column: the contexts, r for adapter routing, "former" for the former path."""
    return ("r" if row.get("routing") else "") + str(row["parallel"]) if row["parallel"] else "former"


def _step_row(engine, scorer, train: list, q: int, batch_size: int, warmup: int, min_steps: int,
              max_s: float, profile: bool) -> dict:
    """Time P-RGE steps of `engine` at q and this batch size, scoring through `scorer`: the
    median step, the median time in scoring (the rest is Python: z, adapters, update) and the
    engine's seconds per step in decode, adapter and logits (summed over contexts)."""
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.prge import prge_step
    from prge_gguf.targets import TARGETS
    from prge_gguf.train import TrainConfig, batch_indices, lr_at, pair_loss_fn

    cfg = TrainConfig(q=q, batch_size=batch_size, steps=1000)
    adapter = init_lora_fa(engine.header, list(TARGETS), cfg.rank, cfg.alpha, seed=cfg.seed)
    times, scoring, losses, tokens, parts = [], [], [], [], []
    for step in range(warmup + 1000):
        batch = [train[i] for i in batch_indices(len(train), cfg.batch_size, cfg.seed, step)]
        pair_loss, in_scoring = pair_loss_fn(scorer, adapter, batch, cfg), []

        def timed(scaled, pair_loss=pair_loss, in_scoring=in_scoring):
            t = time.perf_counter()
            out = pair_loss(scaled)
            in_scoring.append(time.perf_counter() - t)
            return out

        before = Counter(engine.timings)
        t0 = time.perf_counter()
        new_b, lp, lm = prge_step(adapter.b, timed, seed=cfg.seed, step=step, q=q, eps=cfg.eps,
                                  lr=lr_at(cfg, step))
        adapter = adapter.with_b(new_b)
        dt = time.perf_counter() - t0
        losses.append(float((lp.mean() + lm.mean()) / 2))
        if step >= warmup:
            times.append(dt)
            scoring.append(in_scoring[0])
            tokens.append(2 * q * sum(ex.n_tokens for ex in batch))
            parts.append(Counter(engine.timings) - before)
        if len(times) >= min_steps and sum(times) >= max_s:
            break
    if profile:
        # Where a step's host time goes: three more steps under cProfile, the top functions by
        # their own time (threads other than the caller's are not profiled).
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [prge_step(adapter.b, pair_loss_fn(scorer, adapter, train[:batch_size], cfg),
                                            seed=cfg.seed, step=s, q=q, eps=cfg.eps, lr=0.0)
                                  for s in range(3)])
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
        log(text.getvalue())
    med = statistics.median(times)
    return {"q": q, "batch_size": batch_size, "n_ctx": engine.n_ctx, "steps_timed": len(times),
            "warmup": warmup, "step_s_median": med, "step_s_min": min(times), "step_s_all": times,
            "scoring_s_median": statistics.median(scoring),
            "engine_parts_s": {key: statistics.median(p[key] for p in parts)
                               for key in ("decode", "adapter", "logits")},
            "perturbations_s": 2 * q / med, "tokens_per_step": statistics.mean(tokens),
            "tok_s": statistics.mean(tokens) / med, "loss_step1": losses[0],
            "gpu_mem_used_mib": _gpu_mem_used_mib()}


def step_variants(backend: str, qs: list[int], batches: list[int], parallels: list[str],
                  cpu_splits: list[tuple[int, int, bool]]) -> list[tuple[int, int, int, int | None, bool]]:
    """(q, batch size, K, threads in all, adapter routing) to measure: on CUDA each K of
    `parallels` ("0": the former path; "2q": one context a perturbation; an "r" before K: with
    adapter routing) up to 2q contexts, at the engine's default threads; on the CPU each split
    K x T of its cores (rKxT: with routing) up to 2q contexts, and the former path on the threads
    of the first split."""
    if backend == "cuda":
        def parse(k: str, q: int) -> tuple[int, bool]:
            routed = k.startswith("r")
            k = k.removeprefix("r")
            return (2 * q if k == "2q" else int(k)), routed

        ks = {q: list(dict.fromkeys(parse(k, q) for k in parallels)) for q in qs}
        return [(q, b, k, None, routed) for b in batches for q in qs for k, routed in ks[q] if k <= 2 * q]
    splits = [(0, cpu_splits[0][0] * cpu_splits[0][1], False), *((k, k * t, r) for k, t, r in cpu_splits)]
    return [(q, b, k, threads, r) for b in batches for q in qs for k, threads, r in splits if k <= 2 * q]


def _file_type(model: Path) -> str:
    from prge_gguf.gguf_header import read_header

    counts: dict[str, int] = {}
    for info in read_header(model).tensors.values():
        counts[info.type_name] = counts.get(info.type_name, 0) + 1
    return max(counts, key=counts.get)


# -- torch: one batched forward of 2q perturbations vs 2q sequential forwards ------------------
def torch_rows(model: Path, preset: str, device: str, qs: list[int], repeats: int,
               max_s: float) -> list[dict]:
    """`TorchEngine.score_each` (all 2q adapters stacked in one forward) vs 2q calls of
    `score`, on the first batch of 16 SST-2 examples, median of `repeats` after warm-up."""
    import torch

    from prge_gguf.engine.torch_engine import TorchEngine
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.targets import TARGETS
    from prge_gguf.tasks import builtin_task, tokenize
    from prge_gguf.train import TrainConfig, batch_indices

    t0 = time.perf_counter()
    engine = TorchEngine(model, device=device)
    load_s = time.perf_counter() - t0
    task = builtin_task("sst2")
    raw = task.examples(task.train_file)
    cfg = TrainConfig()
    batch = [tokenize(engine, raw[i]) for i in batch_indices(len(raw), cfg.batch_size, cfg.seed, 0)]
    requests = [r for ex in batch for r in ex.requests]
    base = init_lora_fa(engine.header, list(TARGETS), cfg.rank, cfg.alpha, seed=cfg.seed)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, object]:
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    rows = []
    for q in qs:
        adapters = _step_adapters(base, q, cfg.eps, cfg.seed)

        def batched(adapters=adapters):
            return engine.score_each(requests, adapters)

        def sequential(adapters=adapters):
            return [engine.score(requests, [(a, 1.0)]) for a in adapters]

        for fn in (batched, sequential):  # warm-up: kernels, allocator, cuBLAS handles
            timed(fn)
        t_b, t_s = [], []
        start = time.perf_counter()
        for _ in range(repeats):  # interleaved, so drift hits both alike
            dt, out_b = timed(batched)
            t_b.append(dt)
            dt, out_s = timed(sequential)
            t_s.append(dt)
            if time.perf_counter() - start > max_s and len(t_b) >= 3:
                break
        diff = _max_abs_diff(out_b, out_s)
        row = {"model": preset, "device": device, "q": q, "perturbations": 2 * q,
               "batch_size": cfg.batch_size,
               "tokens_per_forward": sum(r.n_tokens for r in requests), "repeats": len(t_b),
               "batch_tokens": engine._batch_tokens,
               "sequential_s_median": statistics.median(t_s), "batched_s_median": statistics.median(t_b),
               "sequential_s_all": t_s, "batched_s_all": t_b,
               "speedup": statistics.median(t_s) / statistics.median(t_b),
               "max_abs_logprob_diff": diff, "load_s": load_s}
        log(f"torch {preset} {device} q={q}: sequential {row['sequential_s_median'] * 1e3:.1f} ms, "
            f"batched {row['batched_s_median'] * 1e3:.1f} ms, x{row['speedup']:.2f}, max |diff| {diff:.2e}")
        rows.append(row)
    engine.close()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


# -- tables -------------------------------------------------------------------------------------
def tables(result: dict) -> str:
    """Markdown tables of the llama.cpp step and torch forward rows."""
    m = result["machine"]
    lines = [f"GPU: {m.get('gpu') or 'none'}; CPU: {m['cpu']} ({m['cores']} cores); "
             f"llama-cpp-python {result.get('llama_cpp_python', '?')} "
             f"({result.get('llama_system_info', '').strip()}); torch {m['torch']} (CUDA {m['torch_cuda']}); "
             f"commit {m.get('carry_commit') or m['git_commit']}.",
             "Models: random-weight GGUFs of real shapes (prge_gguf/synthetic.py) - speed only, "
             "never accuracy.", ""]
    cuda = [r for r in result["llama_steps"] if r["backend"] == "cuda"]
    if cuda:
        lines += ["P-RGE training step, llama.cpp with every layer on the GPU (SST-2 rows, r 8, all seven "
                  "projections, context fitted to the batch as train fits it; median s/step). K: contexts "
                  "scoring the step's 2q perturbations at once, each with a resident adapter overwritten "
                  "in place; former: one context, each perturbation written to a GGUF file, loaded and "
                  "set in turn (the engine's path before --parallel). Engine seconds are summed over "
                  "contexts; the rest of a step is Python (z, perturbed B, update).",
                  "", "| model | type | batch | q | K | s/step | perturbations/s | vs former | scoring s "
                  "| decode / adapter / logits s | GPU MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        former = {(r["model"], r["batch_size"], r["q"]): r for r in cuda if r["parallel"] == 0}
        for r in cuda:
            base = former.get((r["model"], r["batch_size"], r["q"]))
            parts = " / ".join(f"{r['engine_parts_s'][k]:.4f}" for k in ("decode", "adapter", "logits"))
            lines.append(f"| {r['model']} | {r['type']} | {r['batch_size']} | {r['q']} | "
                         f"{_k_label(r)} | {r['step_s_median']:.4f} | "
                         f"{r['perturbations_s']:.1f} | {_ratio(base, r)} | {r['scoring_s_median']:.4f} | "
                         f"{parts} | {r['gpu_mem_used_mib'] or '-'} |")
        lines += ["", *_targets(cuda), ""]
    cpu = [r for r in result["llama_steps"] if r["backend"] == "cpu"]
    if cpu:
        lines += ["The same step on the GPU machine's CPU alone (CUDA_VISIBLE_DEVICES=''): K contexts x T "
                  "threads each (former: one context of the first split's threads, adapter files):",
                  "", "| model | type | batch | q | K x threads | s/step | perturbations/s | vs former |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        former = {(r["model"], r["batch_size"], r["q"]): r for r in cpu if r["parallel"] == 0}
        for r in cpu:
            k = r["parallel"]
            split = f"{_k_label(r)} x {r['threads'] // k}" if k else f"former x {r['threads']}"
            lines.append(f"| {r['model']} | {r['type']} | {r['batch_size']} | {r['q']} | {split} | "
                         f"{r['step_s_median']:.4f} | {r['perturbations_s']:.1f} | "
                         f"{_ratio(former.get((r['model'], r['batch_size'], r['q'])), r)} |")
        lines.append("")
    fw = result["torch_forwards"]
    if fw:
        tm = result.get("torch_machine")
        where = (f" (an earlier run: {tm['gpu']}, torch {tm['torch']}, commit {tm['git_commit']})"
                 if tm and tm != m else "")
        lines += ["Torch engine (fp32, transformers), the 2q perturbed adapters of one step on a batch "
                  f"of 16{where}:",
                  "", "| model | device | q | 2q sequential forwards (ms) | one batched forward (ms) "
                  "| speed-up | max abs log-prob diff |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in fw:
            lines.append(f"| {r['model']} | {r['device']} | {r['q']} | "
                         f"{r['sequential_s_median'] * 1e3:.1f} | "
                         f"{r['batched_s_median'] * 1e3:.1f} | {r['speedup']:.2f}x | "
                         f"{r['max_abs_logprob_diff']:.1e} |")
    if result.get("skipped"):
        lines += ["", "Not measured (time budget or error): " + "; ".join(result["skipped"])]
    return "\n".join(lines)


def _ratio(base: dict | None, row: dict) -> str:
    """How many times faster `row` steps than `base` ("-" without a base)."""
    return f"{base['step_s_median'] / row['step_s_median']:.2f}x" if base else "-"


def _targets(rows: list[dict]) -> list[str]:
    """Issue #24's targets, from the fastest K of each (model, batch, q) against the former path."""
    best: dict = {}
    for r in rows:
        key = (r["model"], r["batch_size"], r["q"], r["parallel"] == 0)
        if key not in best or r["step_s_median"] < best[key]["step_s_median"]:
            best[key] = r
    lines = ["Targets (fastest K against the former path, same run):", ""]
    for (model, batch, q, is_former), r in sorted(best.items()):
        q1 = best.get((model, batch, 1, is_former))
        if q > 1 and q1:
            how = "former" if is_former else f"K = {_k_label(r)}"
            lines.append(f"- {model} batch {batch}, {how}: "
                         f"q = {q} step / q = 1 step = {r['step_s_median'] / q1['step_s_median']:.2f}")
        former = best.get((model, batch, q, True))
        if not is_former and former:
            lines.append(f"- {model} batch {batch} q = {q}: {r['perturbations_s']:.1f} perturbations/s at "
                         f"K = {_k_label(r)}, {_ratio(former, r)} the former path's "
                         f"{former['perturbations_s']:.1f}")
    return lines


def main() -> None:
    """Parse flags; prepare the carry folder, or set up and measure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare-carry", type=Path, metavar="DIR", help="here: write the carry folder and stop")
    ap.add_argument("--sdist", type=Path, help="with --prepare-carry: a downloaded llama-cpp-python sdist")
    ap.add_argument("--carry", type=Path, help="carry folder: install (or build) llama-cpp-python from it")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench", help="gpu.json, gpu.md (and wheel parts)")
    ap.add_argument("--vocab", type=Path, help="tokenizer source GGUF (default CARRY/vocab.gguf or the "
                                               "shipped model)")
    ap.add_argument("--presets", default="smollm2-135m,tinyllama-1.1b,llama-7b:Q4_0",
                    help="PRESET[:TYPE],...: CUDA rows (TYPE default --type)")
    ap.add_argument("--cpu-presets", default="smollm2-135m", help="CPU rows (contexts x threads splits)")
    ap.add_argument("--type", default="Q4_1", help="llama.cpp rows' file type (default: the shipped Q4_1)")
    ap.add_argument("--llama-backends", default="cpu,cuda")
    ap.add_argument("--llama-q", default="1,4")
    ap.add_argument("--batch-sizes", default="16,64", help="CUDA rows' batch sizes")
    ap.add_argument("--cpu-batch-sizes", default="16")
    ap.add_argument("--parallel", default="0,1,2q",
                    help="CUDA rows' contexts K (0: the former path, one adapter file loaded at a time; "
                         "2q: one context a perturbation; rK: K contexts with adapter routing, which "
                         "needs --patch)")
    ap.add_argument("--profile", default="", metavar="Q,BATCH,K;...",
                    help="CUDA rows of the first preset to profile (cProfile, printed) after timing")
    ap.add_argument("--cpu-splits", default=f"1x{os.cpu_count()},2x{max(1, (os.cpu_count() or 2) // 2)},"
                                            f"4x{max(1, (os.cpu_count() or 4) // 4)},"
                                            f"8x{max(1, (os.cpu_count() or 8) // 8)}",
                    help="CPU rows' contexts x threads each (default: splits of all cores)")
    ap.add_argument("--warmup", type=int, default=2, help="steps (or forwards) left out of the timing")
    ap.add_argument("--min-steps", type=int, default=5)
    ap.add_argument("--max-s", type=float, default=15.0, help="seconds of timed steps per row (at least "
                                                              "--min-steps)")
    ap.add_argument("--torch-device", default="cuda")
    ap.add_argument("--torch-q", default="1,4,8,16")
    ap.add_argument("--torch-presets", default="smollm2-135m,smollm2-360m")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--patch", type=Path, help="build llama-cpp-python with this patch applied "
                                                "(e.g. patches/llama-cpp-adapter-routing.patch)")
    ap.add_argument("--build", action="store_true", help="build llama-cpp-python even if CARRY/whl "
                                                        "holds a package archive")
    ap.add_argument("--keep-torch", type=Path, metavar="JSON",
                    help="take the torch rows (and their machine) from this former gpu.json")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start nothing new after this many seconds")
    ap.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "prge-gpu-models")
    ap.add_argument("--item", help=argparse.SUPPRESS)  # internal: one measurement in a child process
    ap.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare_carry:
        prepare_carry(args.prepare_carry, args.sdist)
        return

    if args.item:
        run_item(args)
        return

    t_start = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"note": "random-weight models: speed only, never accuracy", "command": " ".join(sys.argv),
                    "llama_steps": [], "torch_forwards": [], "skipped": []}
    backends = [b for b in args.llama_backends.split(",") if b]
    if args.carry:
        try:
            result["setup"] = setup(args.carry, args.out_dir, os.cpu_count() or 1, args.build, args.patch)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            log(f"setup failed: {exc}")
            result["skipped"].append(f"llama.cpp rows ({exc})")
            backends = []
    result["machine"] = machine(args.carry)
    log(json.dumps(result["machine"]))
    if args.keep_torch:
        former = json.loads(args.keep_torch.read_text())
        result["torch_forwards"] = former["torch_forwards"]
        result["torch_machine"] = former.get("torch_machine") or former["machine"]
    if backends:
        info = _child(args, "info", {}, timeout=120)
        if isinstance(info, str):
            result["skipped"].append(f"llama.cpp rows (llama_cpp does not load: {info})")
            backends = []
        else:
            result.update(info)

    def save() -> None:
        (args.out_dir / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out_dir / "gpu.md").write_text(tables(result) + "\n")

    # llama.cpp CUDA per shape, smallest first, then the CPU splits, then torch. Each runs in its
    # own process: a crash loses one item, and no CUDA context outlives its measurement.
    def typed(preset: str) -> str:
        return preset if ":" in preset else f"{preset}:{args.type}"

    work = [(f"llama:{typed(p)}:{backend}", "llama_steps")
            for backend, presets in (("cuda", args.presets), ("cpu", args.cpu_presets)) if backend in backends
            for p in presets.split(",") if p]
    work += [(f"torch:{p}", "torch_forwards") for p in args.torch_presets.split(",") if p]
    for item, key in work:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            result["skipped"].append(f"{item} (budget: {elapsed:.0f} s gone)")
            log(f"skip {item}: {elapsed:.0f} s > budget {args.budget_s:.0f} s")
            continue
        # A CPU step must not see the GPU: a CUDA build of llama.cpp otherwise offloads large
        # batches' matrix products of CPU-resident weights to it (op offload).
        env = {"CUDA_VISIBLE_DEVICES": ""} if item.endswith(":cpu") else {}
        rows = _child(args, item, env, timeout=max(60.0, args.budget_s + 120 - elapsed))
        if isinstance(rows, str):
            result["skipped"].append(f"{item} ({rows})")
        else:
            result[key] += rows
        save()
    result["wall_s"] = time.perf_counter() - t_start
    save()
    log(tables(result))


def _ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",") if x]


def _child(args: argparse.Namespace, item: str, env: dict, timeout: float) -> list | dict | str:
    """Run `item` in a fresh interpreter (faulthandler on); its JSON, or why there is none."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        rows = Path(fh.name)
    cmd = [sys.executable, "-X", "faulthandler", __file__, *sys.argv[1:], "--item", item,
           "--rows-json", str(rows)]
    try:
        rc = subprocess.run(cmd, env=dict(os.environ, **env), timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if rc != 0 or not rows.stat().st_size:
        log(f"{item}: exit code {rc}")
        return f"exit code {rc}"
    return json.loads(rows.read_text())


def run_item(args: argparse.Namespace) -> None:
    """One measurement (in a child process): `info`, `llama:PRESET:BACKEND` or `torch:PRESET`."""
    if args.carry and SITE.is_dir():
        activate_site()
    vocab = args.vocab or (args.carry / "vocab.gguf" if args.carry else None)
    from prge_gguf.synthetic import write_synthetic

    def model(preset: str, ftype: str) -> Path:
        path = args.models_dir / f"{preset}-{ftype}.gguf"
        if not path.exists():
            t0 = time.perf_counter()
            write_synthetic(path, preset, ftype, seed=0, vocab_source=vocab)
            size = path.stat().st_size / 2**20
            log(f"wrote {path.name} ({size:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        return path

    kind, *rest = args.item.split(":")
    if kind == "info":
        import llama_cpp
        import llama_cpp.llama_cpp as ll

        out: list | dict = {"llama_cpp_python": llama_cpp.__version__,
                            "llama_system_info": ll.llama_print_system_info().decode().strip(),
                            "llama_gpu_offload": bool(ll.llama_supports_gpu_offload())}
        log(f"llama.cpp: {out}")
    elif kind == "llama":
        preset, ftype, backend = rest
        qs = [int(q) for q in args.llama_q.split(",")]
        if backend == "cuda":
            variants = step_variants(backend, qs, _ints(args.batch_sizes), args.parallel.split(","), [])
        else:
            splits = [(*(int(n) for n in split.removeprefix("r").split("x")), split.startswith("r"))
                      for split in args.cpu_splits.split(",")]
            variants = step_variants(backend, qs, _ints(args.cpu_batch_sizes), [], splits)
        profile = {tuple(_ints(v)) for v in args.profile.split(";") if v} if backend == "cuda" \
            and preset == args.presets.split(",")[0].split(":")[0] else set()
        out = llama_step_rows(model(preset, ftype), preset, backend, variants, args.warmup, args.min_steps,
                              args.max_s, profile)
    else:
        # F16 file: transformers dequantizes to fp32 anyway, and it needs no llama.cpp.
        preset = rest[0]
        out = torch_rows(model(preset, "F16"), preset, args.torch_device,
                         [int(q) for q in args.torch_q.split(",")], args.repeats, args.max_s)
    args.rows_json.write_text(json.dumps(out))

if __name__ == "__main__":
    main()
