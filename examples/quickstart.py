"""noprop in ten lines: train NoProp-DT on MNIST, evaluate it, save it, load it back, predict.

    python examples/quickstart.py    # 1 minute of training at most, then the evaluation (docs/performance.md)

(NOPROP_QUICKSTART_SUBSET=N trains on N images instead of 10,000 and tests on N; the tests use it.)
"""

import os

import noprop

small = os.environ.get("NOPROP_QUICKSTART_SUBSET")
config = noprop.Config(method="dt", epochs=1, train_subset=int(small or 10000),  # every method: noprop.METHODS
                       minutes=1, test_subset=int(small) if small else None)  # a 1-minute budget: every block trains
run = noprop.train(config, out_dir="runs/quickstart", eval_runs=2,
                   resume=os.path.exists("runs/quickstart/train_state.safetensors"))
rule = run.result["rule_chosen_on_val"]                                 # chosen on validation, never on test
print(f"test accuracy: {run.result['test'][rule]['mean']:.2f}% ({rule} rule), paper's rule "
      f"{run.result['test_acc_mean']:.2f}%; {run.result['train_seconds']:.0f} s training, "
      f"{run.result['evaluation_seconds']:.0f} s evaluation")

model = noprop.load("runs/quickstart/last.safetensors")                 # portable weights + config
print("noise-free inference:", noprop.evaluate(model, "test", runs=1, noise=False, data=run.data))
images = run.data.test.x[:8]                                            # normalised as the loaders do
print("predicted:", model.predict(images).tolist(), "true:", run.data.test.y[:8].tolist())
