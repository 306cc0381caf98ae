"""noprop in ten lines: train NoProp-DT on MNIST, evaluate it, save it, load it back, predict.

    python examples/quickstart.py        # about a minute on a 2-core CPU

(NOPROP_QUICKSTART_SUBSET=N trains on N images instead of 10,000 and tests on N; the tests use it.)
"""

import os

import noprop

small = os.environ.get("NOPROP_QUICKSTART_SUBSET")
config = noprop.Config(method="dt", epochs=1, train_subset=int(small or 10000),  # every method: noprop.METHODS
                       test_subset=int(small) if small else None)
run = noprop.train(config, out_dir="runs/quickstart", resume=os.path.exists("runs/quickstart/train_state.safetensors"))
print(f"test accuracy: {run.result['test_acc_mean']:.2f} +- {run.result['test_acc_se']:.2f}% "
      f"({len(run.history)} epoch(s), 5 inference runs)")

model = noprop.load("runs/quickstart/last.safetensors")                 # portable weights + config
print("noise-free inference:", noprop.evaluate(model, "test", runs=1, noise=False, data=run.data))
images = run.data.test.x[:8]                                            # normalised as the loaders do
print("predicted:", model.predict(images).tolist(), "true:", run.data.test.y[:8].tolist())
