#!/usr/bin/env bash
# GPU check for the kernels: CUDA results must equal CPU results within each kind's
# tolerance (upscale: PSNR; physics_step, flocking, raytrace: the kind's `equivalent`, and
# it reports whether the bytes are identical, which those kernels are built for), each
# kernel is timed on CUDA against the CPU default, and a 1920x1080 -> 3840x2160 quality
# upscale is timed on CUDA (aim: <= 4 ms). pathfind has no GPU path (sequential A*).
# Exits 0 with a message when there is no GPU, 1 when a kernel is out of tolerance.
# Usage: scripts/gpu_check.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python}"
if [ -x .venv/bin/python ] && [ "$#" -eq 0 ]; then PY=.venv/bin/python; fi

exec "$PY" - <<'PYEOF'
import sys, time
import numpy as np
try:
    import torch
except ImportError:
    print("gpu_check: torch is not installed; nothing to check"); sys.exit(0)
if not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible to torch; nothing to check"); sys.exit(0)

from tasks.codecs import psnr
from tasks.kernels import upscale
from tasks.kernels._common import sample_photo

print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
ok = True
rng = np.random.default_rng(0)
for (w, h) in ((320, 180), (1920, 1080)):
    img = sample_photo(rng, w, h)
    for mode in ("fast", "quality"):
        oh, ow = upscale.output_size(h, w, 2.0)
        cpu = upscale.upscale_torch(img, oh, ow, mode, device="cpu")
        gpu = upscale.upscale_torch(img, oh, ow, mode, device="cuda")
        p = psnr(cpu, gpu)
        good = p >= upscale.EQUIVALENCE_PSNR_DB
        ok &= good
        print(f"upscale {w}x{h} x2 {mode}: CUDA vs CPU PSNR {p:.1f} dB (need >= {upscale.EQUIVALENCE_PSNR_DB}) {'OK' if good else 'FAIL'}")

# physics_step, flocking, raytrace: CUDA (torch) against the CPU default, on the kinds'
# own examples, through the same encode as a worker, compared with the kind's equivalence.
import statistics
from tasks.codecs import encode_array
from tasks.kernels import flocking, physics, raytrace
from tasks.registry import default_registry


def _ms(fn, n):
    fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


reg = default_registry()
for name in ("physics_step", "flocking", "raytrace"):
    kind = reg.get(name)
    for size in ("small", "medium", "large"):
        params, data = kind.example(np.random.default_rng(1), size)
        params = kind.validate_params(params, len(data))
        if name == "physics_step":
            world = physics._decode_world(params, data)
            a = [params[k] for k in ("steps", "dt", "gravity", "restitution", "walls", "box")]
            run = lambda b, dev: encode_array(physics.simulate(world, *a, backend=b, device=dev))
        elif name == "flocking":
            agents = flocking._decode(params, data)
            run = lambda b, dev: encode_array(flocking.simulate(agents, params, b, dev))
        else:
            scene = raytrace.decode_scene(params, data)
            keys = ("width", "height", "x0", "y0", "w", "h", "spp", "max_depth", "seed")
            a = [params[k] for k in keys]
            run = lambda b, dev: encode_array(raytrace.to_rgb8(raytrace.render_tile(scene, *a, backend=b, device=dev)))
        cpu_backend = {"physics_step": physics, "flocking": flocking, "raytrace": raytrace}[name].CPU_BACKEND
        cpu = run(cpu_backend, "cpu")
        gpu = run("torch", "cuda")
        same = cpu == gpu
        good = same or kind.equivalent(params, cpu, gpu)
        ok &= good
        n = 1 if size == "large" else 3
        cpu_ms = _ms(lambda: run(cpu_backend, "cpu"), n)
        gpu_ms = _ms(lambda: run("torch", "cuda"), n)
        print(f"{name} {size}: CUDA vs CPU ({cpu_backend}) {'bit-identical' if same else 'within tolerance' if good else 'OUT OF TOLERANCE'}; "
              f"CPU {cpu_ms:.1f} ms, CUDA {gpu_ms:.1f} ms ({cpu_ms / gpu_ms:.1f}x) {'OK' if good else 'FAIL'}")
        sys.stdout.flush()

# Timing: the GPU part only (frame already on the device, output left there), as a game
# pipeline keeping frames on the GPU would see it, plus the end-to-end figure with copies.
F = torch.nn.functional
img = sample_photo(rng, 1920, 1080)
x = torch.from_numpy(img.copy()).cuda()
def on_device():
    with torch.inference_mode():
        y = upscale._sharpen_torch(x.float()).round_().clamp_(0, 255)
        z = F.interpolate(y.permute(2, 0, 1)[None], size=(2160, 3840), mode="bicubic", antialias=True)
        return z.round_().clamp_(0, 255).to(torch.uint8)
for _ in range(5):
    on_device()
torch.cuda.synchronize()
n = 50
t0 = time.perf_counter()
for _ in range(n):
    on_device()
torch.cuda.synchronize()
dev_ms = (time.perf_counter() - t0) / n * 1000
t0 = time.perf_counter()
for _ in range(10):
    upscale.upscale_torch(img, 2160, 3840, "quality", device="cuda")
e2e_ms = (time.perf_counter() - t0) / 10 * 1000
print(f"quality upscale 1920x1080 -> 3840x2160 on CUDA: {dev_ms:.2f} ms on device (aim <= 4 ms), "
      f"{e2e_ms:.1f} ms with host copies")
sys.exit(0 if ok else 1)
PYEOF
