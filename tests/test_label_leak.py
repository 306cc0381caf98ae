"""Pitfall 3, label leakage at evaluation, caught by a method that cheats.

``LabelReader`` is a method registered here for the test alone. Its prediction reads the labels
wherever it can reach them: in any argument of any inference call (recursively, through containers
and objects such as a Split), in attributes set on the model after it was built, and among the
training images it memorised (image bytes -> label) while it "trained". Where it finds none it
guesses a class from the image's bytes, which is chance. Through our training and evaluation it
must score chance on validation and test; given a leak, it scores 100% and the test fails. Every
call the evaluation makes into the model is also recorded, and no argument may hold the labels, by
identity, by shared storage or by value.

The last test puts three kinds of leak into the evaluation and checks that each is caught: the test
can fail."""

import functools
import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noprop
from noprop import evaluation

CLASSES = 10
INFERENCE = ("image_features", "final_latent", "chain", "classify", "predict_logits", "predict")
SMALL = dict(train_subset=512, val_subset=200, test_subset=500, batch_size=64, epochs=2)


def image_key(image: torch.Tensor) -> bytes:
    return hashlib.sha1(image.detach().float().cpu().contiguous().numpy().tobytes()).digest()


def walk(obj, path="", seen=None, depth=0):
    """(path, tensor) for every tensor reachable from obj through containers and object attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6 or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(k, f"{path}.key", seen, depth + 1)
            yield from walk(v, f"{path}[{k!r}]", seen, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]", seen, depth + 1)
    elif hasattr(obj, "__dict__") and not callable(obj):
        for k, v in vars(obj).items():
            yield from walk(v, f"{path}.{k}", seen, depth + 1)


def own_attributes(model: nn.Module) -> dict:
    """What was set on the model besides its parameters and what it memorised while training."""
    return {k: v for k, v in vars(model).items() if k not in ("_memory", "calls", "_depth", "_parameters")}


def inference(fn):
    """Record the outermost call into the model's inference interface (calls between its own methods
    are not the evaluation's): the name, the arguments and the model's attributes at that moment."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self._depth == 0:
            self.calls.append((fn.__name__, args, kwargs, dict(own_attributes(self))))
        self._depth += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
    return wrapper


@noprop.register_method
class LabelReader(noprop.Method):
    """Predicts the labels it can read (see the module docstring); a test's, not the package's."""
    name = "test-label-reader"
    display_name = "Label reader (a test's)"
    in_paper = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.zeros(1))  # something for the optimizers to hold
        self._memory: dict[bytes, int] = {}
        self.calls: list = []
        self._depth = 0

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(num_classes)

    def loss(self, x, y, blocks=None):
        for image, label in zip(x, y.tolist()):
            self._memory[image_key(image)] = label
        loss = (self.weight * 0).sum()
        return {"loss": loss, "ce": loss.detach()}

    def read_labels(self, x: torch.Tensor, *reachable) -> torch.Tensor:
        """The labels of x as far as anything reachable tells them; a guess from the bytes elsewhere."""
        keys = [image_key(image) for image in x]
        found: dict[bytes, int] = {k: self._memory[k] for k in keys if k in self._memory}
        for _, t in walk(list(reachable) + [own_attributes(self)]):
            if t is x or t.dim() == 0 or len(t) != len(x):
                continue
            if t.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) and t.dim() == 1:
                found.update(zip(keys, t.tolist()))  # the labels of these images, one per image
            elif t.is_floating_point() and t.shape == (len(x), self.num_classes):
                found.update(zip(keys, t.argmax(-1).tolist()))  # one-hot labels, or scores built from them
        for _, obj in walk_objects(list(reachable) + [own_attributes(self)]):
            lookup = {image_key(image): label for image, label in zip(obj.x, obj.y.tolist())}
            found.update({k: lookup[k] for k in keys if k in lookup})
        return torch.tensor([found.get(k, k[0] % self.num_classes) for k in keys])

    @inference
    def image_features(self, x, *args, **kwargs):
        self.read_labels(x, args, kwargs)  # nothing to share: the result is None, as the default's
        return None

    @inference
    def final_latent(self, x, *args, **kwargs):
        return F.one_hot(self.read_labels(x, args, kwargs), self.num_classes).float()

    @inference
    def chain(self, x, *args, **kwargs):
        yield noprop.ChainStep(1, self.final_latent(x, *args, **kwargs))

    @inference
    def classify(self, z, *args, **kwargs):
        return z

    @inference
    def predict_logits(self, x, *args, **kwargs):
        return self.classify(self.final_latent(x, *args, **kwargs))

    @inference
    def predict(self, x, *args, **kwargs):
        return self.predict_logits(x, *args, **kwargs).argmax(-1)


def walk_objects(obj):
    """Objects reachable from obj that hold images and their labels (a Split, or anything like it)."""
    seen = set()

    def visit(o, depth=0):
        if id(o) in seen or depth > 6 or isinstance(o, (str, bytes, int, float, bool, type, torch.Tensor)):
            return
        seen.add(id(o))
        if isinstance(getattr(o, "x", None), torch.Tensor) and isinstance(getattr(o, "y", None), torch.Tensor):
            yield "", o
        children = (list(o.values()) if isinstance(o, dict) else list(o) if isinstance(o, (list, tuple, set))
                    else list(vars(o).values()) if hasattr(o, "__dict__") and not callable(o) else [])
        for c in children:
            yield from visit(c, depth + 1)
    yield from visit(obj)


def leaks(calls: list, data: noprop.Dataset) -> list[str]:
    """Where a recorded call into the model held labels: the labels tensor of a split (or its
    storage), or a tensor whose values are the labels of the call's images (as integers or as
    the argmax of a row per image)."""
    splits = [data.train, data.val, data.test]
    label_of = {image_key(image): label for s in splits for image, label in zip(s.x, s.y.tolist())}
    storages = {s.y.untyped_storage().data_ptr() for s in splits}
    found = []
    for name, args, kwargs, attributes in calls:
        x = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 else None
        truth = None if x is None else torch.tensor([label_of.get(image_key(i), -1) for i in x])
        for path, t in walk((args, kwargs, attributes)):
            where = f"{name}{path}"
            if any(t is s.y for s in splits) or (t.numel() and t.untyped_storage().data_ptr() in storages):
                found.append(f"{where}: a split's labels tensor")
            elif t.dim() == 1 and not t.is_floating_point() and any(torch.equal(t.long(), s.y) for s in splits):
                found.append(f"{where}: the values of a split's labels")
            elif truth is not None and t is not x and len(t) == len(x) and t.dim() in (1, 2) and (
                    torch.equal(t.long(), truth) if t.dim() == 1 else torch.equal(t.argmax(-1), truth)):
                found.append(f"{where}: the labels of the call's images")
    return found


@pytest.fixture(scope="module")
def cheater():
    """The label reader trained by noprop.train on a real MNIST subset (validation split carved from
    the training images as for any run), with the test set scored under every rule."""
    run = noprop.train(noprop.Config(method="test-label-reader", **SMALL), eval_runs=2, ensemble=3)
    assert len(run.model._memory) >= 500  # it did see the training images, with their labels
    run.training_calls = list(run.model.calls)  # the other tests add theirs
    return run


def chance_everywhere(scores: list[float]) -> None:
    # chance is 10% (the guess is uniform over the image bytes); 500 images: a standard error of 1.3 points
    assert max(scores) < 25.0, scores


def test_training_and_the_final_evaluation_never_show_the_model_a_label(cheater):
    run = cheater
    val_each_epoch = [h["val_acc"] for h in run.history]
    final = [r["mean"] for split in ("test", "val") for r in run.result[split].values()]
    assert set(run.result["test"]) == {"stochastic", "no-noise", "ensemble-3"}
    chance_everywhere(val_each_epoch + final)
    calls = run.training_calls
    assert calls and {c[0] for c in calls} <= set(INFERENCE)
    assert leaks(calls, run.data) == []


@pytest.mark.parametrize("options", [dict(), dict(noise=False), dict(ensemble=3)])
def test_evaluate_never_shows_the_model_a_label(cheater, options):
    model, data = cheater.model, cheater.data
    model.calls.clear()
    scores = [noprop.evaluate(model, split, runs=2, data=data, **options)["mean"]
              for split in ("test", "val", data.test)]
    scores.append(100.0 * (noprop.predict(model, data.test.x) == data.test.y).float().mean().item())
    chance_everywhere(scores)
    assert leaks(model.calls, data) == []


def leak_split_as_argument(model, images, real):
    """The evaluation hands the model the Split it evaluates, beside each batch."""
    model.predict_logits = functools.partial(type(model).predict_logits, model, split=images)
    return real


def leak_labels_of_each_batch(model, images, real):
    """The evaluation passes each batch's labels with its images (pitfall 3's own bug)."""
    label_of = {image_key(image): label for image, label in zip(images.x, images.y.tolist())}

    def predict_logits(x, *args, **kwargs):
        return type(model).predict_logits(model, x, *args, y=torch.tensor([label_of[image_key(i)] for i in x]),
                                          **kwargs)
    model.predict_logits = predict_logits
    return real


def leak_split_on_the_model(model, images, real):
    """The evaluation leaves the Split it evaluates on the model (a global of sorts)."""
    model.evaluated = images
    return real


@pytest.mark.parametrize("leak", [leak_split_as_argument, leak_labels_of_each_batch, leak_split_on_the_model])
def test_the_check_fails_an_evaluation_that_shows_the_labels(cheater, monkeypatch, leak):
    """Each leak put into predict_proba_runs (what rules_accuracy, noprop.evaluate and the trainer's
    evaluation go through): the label reader then scores far above chance, and the recorded calls
    show where the labels came in."""
    model, data = cheater.model, cheater.data
    real = evaluation.predict_proba_runs

    def leaky(model_, images, runs, **kw):
        return leak(model_, images, real)(model_, images, runs, **kw)

    monkeypatch.setattr(evaluation, "predict_proba_runs", leaky)
    model.calls.clear()
    try:
        score = noprop.evaluate(model, data.test, runs=1)["mean"]
    finally:
        vars(model).pop("predict_logits", None)
        vars(model).pop("evaluated", None)
    assert score > 95.0
    with pytest.raises(AssertionError):
        chance_everywhere([score])
    assert leaks(model.calls, data), "the recorded calls show no leak"
