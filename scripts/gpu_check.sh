#!/usr/bin/env bash
# What a maintainer runs on a GPU machine: the GPU tests, the cuda baselines, and the GPU
# figures of docs/results/. Usage: scripts/gpu_check.sh OUTDIR [steps...]
# steps: cuda (GPU tests), record (suite with --vram-update), suite (suite, strict, timed),
#        xdist (suite under -n 2), subset (a few tests alone: another history, same bytes),
#        accuracy / accuracy-train (estimate vs real), build (build benchmark),
#        order (the order-independence proof: 7 fresh runs, strict), overhead (context and
#        persistent workspaces a device budget must add), corpus (third-party workloads,
#        estimate vs real), cnn (CNN training steps, real; compare with the estimate as
#        benchmarks/cnn_accuracy.py says), reductions (CUDA reductions' buffers, real vs
#        the model), sharded (world-of-1 FSDP2/DDP, estimate vs real), attribution (its
#        cost on cuda), benchmarks (pytest benchmarks/ --benchmark-only), throughput
#        (tokens/s beside memory), cudnn (measure cuDNN convolution workspaces for the
#        shipped table: tools/README.md), cudnn-common (the same for stems, patch
#        embeddings, EfficientNet and ConvNeXt layers at ordinary sizes), examples (record
#        the example project's cuda baselines into OUTDIR), ordinary (other people's scripts,
#        tests/vram/test_ordinary.py, estimate vs real per test; needs transformers,
#        accelerate and diffusers as pyproject's test extra pins them), fit (the 8 GiB
#        card's verdicts and largest batch/context: estimate vs the GPU capped to the card),
#        compile (torch.compile'd workloads at realistic size, estimate vs real, each in a
#        fresh process)
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR [steps...]}; shift
mkdir -p "$out"
steps=${*:-cuda record suite accuracy build}
export PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$log"
# If the entry point did not register (an install that failed offline), load the plugin by name.
python3 -c "import importlib.metadata as m, sys; sys.exit(not any(e.name == 'vram' for e in m.entry_points(group='pytest11')))" \
  || export PYTEST_ADDOPTS="-p pytest_vram.pytest_plugin.entry ${PYTEST_ADDOPTS:-}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$log"
run() { echo "== $*" | tee -a "$log"; local t0=$SECONDS; "$@" 2>&1 | tee -a "$log"; echo "== exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$log"; }
for step in $steps; do
  case $step in
    cuda) run timeout 400 python3 -m pytest tests/cuda -p no:cacheprovider -q -rA \
            --deselect tests/cuda/test_order_independence.py ;;
    record) run timeout 200 python3 -m pytest -m vram --vram-update -p no:cacheprovider -q \
              --durations=30 --vram-json="$out/record.json"
            cp baselines/cuda-*.yaml "$out/" ;;
    suite) run timeout 200 env CI=true python3 benchmarks/bench_suite.py --out "$out" -- \
             -rx --vram-json="$out/suite.json" ;;
    xdist) run timeout 200 env CI=true python3 -m pytest -m vram -p no:cacheprovider -q -n 2 -rx ;;
    subset) run timeout 120 env CI=true python3 -m pytest -m vram -p no:cacheprovider -q -rx \
              -k "test_train and (large or maximum)" ;;
    accuracy-train) run timeout 200 python3 benchmarks/estimate_accuracy.py --out "$out" \
                      --workloads train --budget-s 150 ;;
    accuracy) run timeout 300 python3 benchmarks/estimate_accuracy.py --out "$out" --budget-s 240 ;;
    build) run timeout 240 python3 benchmarks/bench_build.py --out "$out" ;;
    order) run timeout 500 env VRAM_ORDER_OUT="$out/order" python3 -m pytest \
             tests/cuda/test_order_independence.py -p no:cacheprovider -q -rA ;;
    overhead) run timeout 120 python3 benchmarks/device_overhead.py --out "$out" ;;
    corpus) run timeout 240 python3 benchmarks/corpus_accuracy.py --out "$out" ;;
    ordinary) run timeout 200 python3 benchmarks/ordinary_accuracy.py --out "$out/ordinary" \
                --budget-s 150 ;;
    compile) run timeout 260 python3 benchmarks/compile_accuracy.py --out "$out/compile" \
               --budget-s 200 ;;
    cnn) run timeout 200 python3 benchmarks/cnn_accuracy.py --backend cuda --out "$out" ;;
    reductions) run timeout 120 python3 benchmarks/reduce_workspace.py --out "$out" ;;
    sharded) run timeout 170 python3 benchmarks/sharded_accuracy.py --out "$out" --budget-s 120 ;;
    attribution) run timeout 150 python3 benchmarks/bench_attribution.py --backend cuda \
                   --repeat 2 --out "$out" ;;
    benchmarks) run timeout 200 python3 -m pytest benchmarks/ --benchmark-only \
                  -p no:cacheprovider --benchmark-json="$out/benchmarks.json" ;;
    throughput) run timeout 150 python3 -m pytest tests/cuda/test_cuda_benchmark.py \
                  tests/vram/test_zoo_throughput.py -p no:cacheprovider --vram-backend=cuda \
                  --vram-no-strict -rA --benchmark-json="$out/throughput.json" \
                  --vram-json="$out/throughput_vram.json" ;;
    cudnn) run timeout 400 python3 tools/cudnn_workspace.py --out "$out" ;;
    cudnn-common) run timeout 400 python3 tools/cudnn_workspace.py --no-corpus --grid common \
                    --budget "${CUDNN_BUDGET_S:-330}" --out "$out/cudnn-common"
                  gzip -9 "$out/cudnn-common/cudnn_workspace.jsonl" ;;
    examples) (cd examples && run timeout 200 python3 -m pytest -m vram -p no:cacheprovider \
                 -p no:randomly --vram-backend=cuda --vram-profile=cuda-nvidia-h200 --vram-update \
                 --vram-baselines="$out/examples")
              rm -rf "$out/examples/breakdowns" ;;
    fit) run timeout 170 python3 benchmarks/fit_accuracy.py --out "$out" --budget-s 130 ;;
    *) echo "unknown step $step" | tee -a "$log" ;;
  esac
done
