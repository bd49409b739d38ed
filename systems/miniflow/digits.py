"""The demo: train an MLP or a small CNN on scikit-learn's digits, checkpoint, restore.

``casebook flow train`` runs :func:`train`. The digits (1797 8x8 images, shipped with
scikit-learn) are split 80/20, stratified and seeded; the model is built with TF1's
API (placeholders, Variables, ``nn`` ops, an optimizer's ``minimize``), trained with
``Session.run`` in mini-batches, saved with the Saver, restored into a *fresh* session
and evaluated again: the two accuracies must be identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import nn
from . import train as mf_train
from .dtypes import float32, int32
from .graph import Graph, device
from .ops.array_ops import reshape
from .ops.control_ops import placeholder
from .ops.math_ops import cast, equal
from .ops.reduction_ops import argmax, reduce_mean
from .ops.state_ops import Variable, global_variables_initializer
from .session import Session


def load_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y.astype(np.int32), test_size=0.2, random_state=seed,
                            stratify=y)


def _dense(x, n_in, n_out, rng, name):
    # He initialisation for ReLU layers (He et al., 2015).
    w = Variable(rng.normal(0, np.sqrt(2.0 / n_in), (n_in, n_out)).astype(np.float32),
                 name=f"{name}/w")
    b = Variable(np.zeros(n_out, np.float32), name=f"{name}/b")
    return x @ w + b


def build_mlp(x, rng, hidden: int = 128):
    return _dense(nn.relu(_dense(x, 64, hidden, rng, "hidden")), hidden, 10, rng, "logits")


def _conv(x, c_in, c_out, rng, name):
    f = Variable(rng.normal(0, np.sqrt(2.0 / (9 * c_in)), (3, 3, c_in, c_out)).astype(
        np.float32), name=f"{name}/filter")
    b = Variable(np.zeros(c_out, np.float32), name=f"{name}/b")
    return nn.relu(nn.conv2d(x, f, strides=1, padding="SAME") + b)


def build_cnn(x, rng):
    h = reshape(x, [-1, 8, 8, 1])
    h = nn.max_pool2d(_conv(h, 1, 16, rng, "conv1"), 2, 2, "VALID")  # 4x4x16
    h = nn.max_pool2d(_conv(h, 16, 32, rng, "conv2"), 2, 2, "VALID")  # 2x2x32
    return _dense(reshape(h, [-1, 128]), 128, 10, rng, "logits")


def build(model: str = "mlp", dev: str = "cpu", seed: int = 0, lr: float = 0.01,
          batch: int | None = None, optimizer=None):
    """The graph: inputs, logits, loss, accuracy and a training op, by Adam unless
    ``optimizer`` (a function of the learning rate, such as
    ``lambda lr: MomentumOptimizer(lr, 0.9)``) says otherwise. ``batch`` fixes the
    inputs' first dimension (then gradient shapes are static and fold); ``None``
    accepts any batch, as training and evaluating on the test set need."""
    g = Graph()
    rng = np.random.default_rng(seed)
    with g.as_default():
        x = placeholder(float32, [batch, 64], name="images")
        y = placeholder(int32, [batch], name="labels")
        with device("/gpu:0" if dev == "cuda" else None):
            logits = (build_mlp if model == "mlp" else build_cnn)(x, rng)
            loss = reduce_mean(nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                                           logits=logits))
            accuracy = reduce_mean(cast(equal(argmax(logits, 1, output_type=int32), y),
                                        float32))
            train_op = (optimizer or mf_train.AdamOptimizer)(lr).minimize(loss)
        init = global_variables_initializer()
        saver = mf_train.Saver()
    return {"graph": g, "x": x, "y": y, "loss": loss, "accuracy": accuracy,
            "train": train_op, "init": init, "saver": saver}


def train(model: str = "mlp", dev: str = "cpu", epochs: int | None = None, batch: int = 32,
          seed: int = 0, checkpoint: str | Path = "out/flow/digits", progress: bool = True
          ) -> dict:
    from tqdm import tqdm

    Xtr, Xte, ytr, yte = load_split(seed)
    m = build(model, dev, seed)
    epochs = epochs or (12 if model == "mlp" else 15)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with Session(graph=m["graph"]) as sess:
        sess.run(m["init"])
        bar = tqdm(range(epochs), desc=f"train {model} on digits", disable=not progress,
                   unit="epoch")
        for _ in bar:
            order = rng.permutation(len(Xtr))
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                sess.run(m["train"], {m["x"]: Xtr[idx], m["y"]: ytr[idx]})
            loss = sess.run(m["loss"], {m["x"]: Xtr, m["y"]: ytr})
            bar.set_postfix(loss=f"{loss:.4f}")
        seconds = time.perf_counter() - t0
        acc = float(sess.run(m["accuracy"], {m["x"]: Xte, m["y"]: yte}))
        path = m["saver"].save(sess, str(checkpoint))
    with Session(graph=m["graph"]) as fresh:
        m["saver"].restore(fresh, path)
        restored = float(fresh.run(m["accuracy"], {m["x"]: Xte, m["y"]: yte}))
    return {"model": model, "device": dev, "epochs": epochs, "train_seconds": seconds,
            "test_accuracy": acc, "restored_accuracy": restored, "checkpoint": path,
            "train_examples": len(Xtr), "test_examples": len(Xte)}


def tour_step(quick: bool = True) -> dict:
    """``casebook tour``: train the MLP, checkpoint, restore, compare."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = train("mlp", checkpoint=Path(d) / "mlp", progress=False)
    print(f"  MLP on digits: {r['test_accuracy']:.1%} held-out accuracy after "
          f"{r['epochs']} epochs ({r['train_seconds']:.1f} s); restored checkpoint: "
          f"{r['restored_accuracy']:.1%}")
    return {"result": f"MLP {r['test_accuracy']:.1%} on held-out digits in "
                      f"{r['train_seconds']:.1f} s; restore matches: "
                      f"{r['restored_accuracy'] == r['test_accuracy']}",
            "test_accuracy": r["test_accuracy"], "restored_accuracy": r["restored_accuracy"]}
