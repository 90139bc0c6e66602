#!/usr/bin/env bash
# Every check of the open issues that needs a GPU, prepared to run in one or two calls of the
# device tool (an H200 here). Each part runs under a time limit; with about 30 s of installs the
# two calls below stay under 7.2 and 6 minutes, and the parts should take about half their limits
# (an estimate: none has run on a GPU yet). The lease is 15 minutes with the machine's start.
#
#   bash benchmarks/gpu_wheels.sh                    # here, once: the wheels it lacks, into .whl/
#   device run: command "bash benchmarks/gpu_checks.sh clip-step train-diffusion", carry [".whl"]
#   device run: command "bash benchmarks/gpu_checks.sh gpu-tests sdxl", carry [".whl"]
#
# Parts (all of them when none is named), each under its own time limit:
#   clip-step        issue 22.5: our contrastive step vs open_clip's, ViT-B/32, bf16, batch 256,
#                    224 px, samples/s and MFU (bench_clip_step.py --peer open_clip)
#   train-diffusion  issue 22.5: train-diffusion on the GPU, captions pre-encoded vs live encoders,
#                    against diffusers' recipe, SD 1.5 shapes, bf16 (bench_train_diffusion.py)
#   gpu-tests        issue 20: the tests that need CUDA (half precision, model and sequential
#                    offload, xformers, group offloading; SD and SDXL)
#   sdxl             issue 20: SDXL base 1.0 shapes, float16, ours / StableDiffusionXLPipeline,
#                    img2img, inpaint and model offload (bench_pipeline.py --family sdxl)
# Results go to $OUT (the device tool brings them back), else runs/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(clip-step train-diffusion gpu-tests sdxl)

# the carried wheels (ahead of the machine's own packages on PYTHONPATH), then this checkout,
# editable: pyproject maps clipcond.pipelines and clipcond.training to other folders, which only
# an installed package resolves when the checkout's own clipcond/ is on sys.path (python -m, pytest)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "installing the checkout failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, diffusers, accelerate; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: run it under its limit, its output to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local started=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -25 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    [ $rc -eq 0 ] || status=1
}

for part in "${parts[@]}"; do
    case $part in
    clip-step)
        step clip_step 170 python3 benchmarks/bench_clip_step.py --peer open_clip --device cuda \
            --mixed-precision bf16 --model configs/models/clip-vit-b-32.yaml --batch 256 --seq 77 \
            --steps 20 --warmup 5 --repeats 3 --output "$out/clip_step_open_clip_gpu.md" ;;
    train-diffusion)
        step train_diffusion 230 python3 benchmarks/bench_train_diffusion.py --size sd15 --image-size 256 \
            --mixed-precision bf16 --threads 16 --batch 8 --steps 16 --warmup 4 --repeats 2 \
            --work-dir /tmp/train_diffusion_work --output "$out/train_diffusion_gpu.md" ;;
    gpu-tests)
        step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider -rs -k "gpu or half or float16 or to_device or offload or xformers" \
            tests/test_pipeline.py tests/test_sdxl_pipeline.py tests/test_train_diffusion.py \
            tests/test_diffusers_fast_sd.py tests/test_diffusers_fast_sdxl.py \
            tests/test_diffusers_fast_img2img.py tests/test_diffusers_fast_inpaint.py ;;
    sdxl)
        step sdxl 210 python3 benchmarks/bench_pipeline.py --family sdxl --sdxl-size full --device cuda \
            --dtype float16 --steps 10 --repeats 3 --output "$out/pipeline_sdxl_gpu.md" ;;
    *)
        echo "unknown part '$part' (clip-step, train-diffusion, gpu-tests, sdxl)"; exit 2 ;;
    esac
done
exit $status
