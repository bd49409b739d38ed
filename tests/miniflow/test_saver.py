"""Checkpoints: exact round trip, atomic writes, and refusals with reasons."""

import os
import time

import numpy as np
import pytest

import systems.miniflow as mf


def _graph(shape=(3, 4), extra=False):
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), name="w")
        b = mf.Variable(np.float32(0.5), name="b")
        if extra:
            mf.Variable(np.zeros(2, np.float32), name="extra")
        bump = w.assign_add(np.ones(shape, np.float32))
        saver = mf.train.Saver()
    return g, w, b, bump, saver


def test_round_trip_restores_exact_values_into_a_fresh_session(tmp_path):
    g, w, b, bump, saver = _graph()
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        s.run(bump)
        want = s.run([w, b])
        path = saver.save(s, str(tmp_path / "ckpt"), write_meta_graph=False)  # TF1's flag
    assert path.endswith(".npz") and os.path.exists(path)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left
    with mf.Session(graph=g) as s2:
        saver.restore(s2, path)  # no initializer run: restore is the initialisation
        got = s2.run([w, b])
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]


def test_mismatched_checkpoints_are_refused_with_every_reason(tmp_path):
    g, w, b, bump, saver = _graph()
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        path = saver.save(s, str(tmp_path / "ckpt"))
    g2, w2, _, _, saver2 = _graph(shape=(4, 3), extra=True)
    with mf.Session(graph=g2) as s2:
        with pytest.raises(mf.NotFoundError) as e:
            saver2.restore(s2, path)
        msg = str(e.value)
        assert "w: checkpoint has shape (3, 4), the graph's variable has (4, 3)" in msg
        assert "extra: not found in the checkpoint" in msg
        with pytest.raises(mf.FailedPreconditionError):
            s2.run(w2)  # nothing was half-restored


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    g, w, b, bump, saver = _graph()
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        path = saver.save(s, str(tmp_path / "ckpt"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # flip a byte in the middle
    open(path, "wb").write(bytes(data))
    with mf.Session(graph=g) as s:
        with pytest.raises(mf.train.DataLossError, match="corrupted|checksum"):
            saver.restore(s, path)
    open(path, "wb").write(b"not a checkpoint")
    with mf.Session(graph=g) as s:
        with pytest.raises(mf.train.DataLossError):
            saver.restore(s, path)
    with mf.Session(graph=g) as s:
        with pytest.raises(ValueError, match="not a valid checkpoint: no checkpoint"):
            saver.restore(s, str(tmp_path / "missing"))  # TF1's ValueError


def test_saving_an_uninitialised_variable_is_an_error(tmp_path):
    g, w, b, bump, saver = _graph()
    with mf.Session(graph=g) as s:
        s.run(w.initializer)
        with pytest.raises(mf.FailedPreconditionError,
                           match="b: the variable is not initialised|cannot save b"):
            saver.save(s, str(tmp_path / "ckpt"))



def test_restore_ignores_checkpoint_entries_it_was_not_asked_for(tmp_path):
    """An inference graph restores w from a training checkpoint that also holds Adam's
    slots and beta powers, as TF's Saver does; missing variables are still refused."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2])
        w = mf.Variable(np.ones((2, 1), np.float32), name="w")
        train = mf.train.AdamOptimizer(0.1).minimize(mf.reduce_sum(mf.matmul(x, w)))
        with mf.Session(graph=g) as s:
            s.run(mf.global_variables_initializer())
            s.run(train, {x: np.ones((1, 2), np.float32)})
            want = s.run(w)
            path = mf.train.Saver().save(s, str(tmp_path / "ckpt"))
    assert any("Adam" in k for k in np.load(path).files)
    g2 = mf.Graph()
    with g2.as_default():
        w2 = mf.Variable(np.zeros((2, 1), np.float32), name="w")
        mf.Variable(np.zeros(2, np.float32), name="other")
        with mf.Session(graph=g2) as s:
            mf.train.Saver([w2]).restore(s, path)
            np.testing.assert_array_equal(s.run(w2), want)
            with pytest.raises(mf.NotFoundError) as e:
                mf.train.Saver().restore(s, path)  # w and other: other is missing
    assert "other: not found in the checkpoint" in str(e.value)
    assert "Adam" not in str(e.value)


def _save_w(tmp_path, dtype=np.float32):
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.arange(6, dtype=dtype).reshape(2, 3), name="w")
        saver = mf.train.Saver()
        with mf.Session(graph=g) as s:
            s.run(w.initializer)
            return saver.save(s, str(tmp_path / "ckpt"))


def test_a_checkpoint_whose_array_disagrees_with_its_manifest_is_data_loss(tmp_path):
    """A well-formed zip (its CRCs fine) whose array was changed after the manifest was
    written: only the SHA-256 in the manifest can tell."""
    path = _save_w(tmp_path)
    with np.load(path) as d:
        manifest, w = d["__manifest__"], d["w"].copy()
    w[0, 0] = 99.0
    np.savez(path, __manifest__=manifest, w=w)
    g = mf.Graph()
    with g.as_default():
        w2 = mf.Variable(np.zeros((2, 3), np.float32), name="w")
        with mf.Session(graph=g) as s:
            with pytest.raises(mf.train.DataLossError, match="'w' fails its checksum"):
                mf.train.Saver().restore(s, path)
            with pytest.raises(mf.FailedPreconditionError):
                s.run(w2)


def test_restoring_into_a_variable_of_another_dtype_is_refused(tmp_path):
    path = _save_w(tmp_path, np.float32)
    g = mf.Graph()
    with g.as_default():
        mf.Variable(np.zeros((2, 3), np.float64), name="w")
        with mf.Session(graph=g) as s:
            with pytest.raises(mf.InvalidArgumentError, match="w: checkpoint has dtype float32"):
                mf.train.Saver().restore(s, path)


def test_a_saver_given_a_dict_saves_under_the_dict_names(tmp_path):
    g = mf.Graph()
    with g.as_default():
        w = mf.Variable(np.full((2,), 3.0, np.float32), name="w")
        with mf.Session(graph=g) as s:
            s.run(w.initializer)
            path = mf.train.Saver({"layer1/kernel": w}).save(s, str(tmp_path / "ckpt"))
    with np.load(path) as d:
        assert sorted(d.files) == ["__manifest__", "layer1/kernel"]
    g2 = mf.Graph()
    with g2.as_default():
        other = mf.Variable(np.zeros((2,), np.float32), name="other_name")
        with mf.Session(graph=g2) as s:
            mf.train.Saver({"layer1/kernel": other}).restore(s, path)
            np.testing.assert_array_equal(s.run(other), [3.0, 3.0])


def test_a_saver_or_load_refuses_another_graphs_session(tmp_path):
    """Values go by name, so another graph's session used to take them: a (3, 4) array
    stored into a variable declared (2,)."""
    g1, w1, b1, _, saver = _graph()
    g2 = mf.Graph()
    with g2.as_default():
        w2 = mf.Variable(np.zeros(2, np.float32), name="w")
    with mf.Session(graph=g1) as s1, mf.Session(graph=g2) as s2:
        s1.run([w1.initializer, b1.initializer])
        s2.run(w2.initializer)
        with pytest.raises(ValueError, match="Saver: variable w is not in the session's"):
            saver.save(s2, str(tmp_path / "ckpt"))
        path = saver.save(s1, str(tmp_path / "ckpt"))
        with pytest.raises(ValueError, match="Saver: variable w is not in the session's"):
            saver.restore(s2, path)
        with pytest.raises(ValueError, match="w:0 is a variable of another graph"):
            w1.load(np.ones((3, 4)), s2)
        np.testing.assert_array_equal(s2.run(w2), [0, 0])


def test_periodic_checkpoints_keep_the_newest_and_name_the_latest(tmp_path):
    """The paper's fault tolerance (section 4.3): save every N steps, restore the latest
    after a failure. save(global_step=) writes model-<step>, the state file names the
    latest, and only max_to_keep checkpoints stay."""
    g, w, b, bump, _ = _graph()
    with g.as_default():
        saver = mf.train.Saver(max_to_keep=2)
    d = tmp_path / "ckpts"
    assert mf.train.latest_checkpoint(str(d)) is None
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for step in range(1, 5):
            s.run(bump)
            path = saver.save(s, str(d / "model"), global_step=step * 10)
        want = s.run(w)
    assert path.endswith("model-40.npz")
    assert sorted(p.name for p in d.glob("model-*")) == ["model-30.npz", "model-40.npz"]
    latest = mf.train.latest_checkpoint(str(d))
    assert latest == path
    with mf.Session(graph=g) as s:  # a fresh process would do this after a failure
        saver.restore(s, latest)
        np.testing.assert_array_equal(s.run(w), want)
    with pytest.raises(ValueError, match="max_to_keep must be >= 0"):
        mf.train.Saver(var_list=[w], max_to_keep=-1)


def test_a_saver_rotates_only_its_own_checkpoints_and_leaves_what_is_not_its_own(tmp_path):
    """max_to_keep used to work from the directory's shared state file: a periodic Saver
    deleted a 'best' Saver's file, and each new run (a new Saver) an earlier run's. A
    'checkpoint' directory or file of the user's made save() fail or was overwritten.
    A step variable is evaluated, as TF does."""
    g, w, b, bump, _ = _graph()
    with g.as_default():
        step = mf.Variable(0, name="global_step")
        best, periodic = mf.train.Saver([w], max_to_keep=None), mf.train.Saver(max_to_keep=2)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        best.save(s, str(tmp_path / "best"))
        mf.train.Saver(max_to_keep=1).save(s, str(tmp_path / "earlier-run"))
        for i in range(3):
            s.run(step.assign(10 * i))
            periodic.save(s, str(tmp_path / "model"), global_step=step)
        assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
            "best.npz", "earlier-run.npz", "model-10.npz", "model-20.npz"]
        assert mf.train.latest_checkpoint(str(tmp_path)).endswith("model-20.npz")
        other = mf.train.Saver([w]).save(s, str(tmp_path / "x"), global_step=np.array(7.0))
        assert other.endswith("x-7.npz")  # a number of any kind, as before the step variable
        for kind in ("dir", "file"):
            d = tmp_path / kind
            d.mkdir()
            (d / "checkpoint").mkdir() if kind == "dir" else (d / "checkpoint").write_text("mine")
            with pytest.warns(UserWarning, match="is not a checkpoint state file"):
                path = periodic.save(s, str(d / "model"), global_step=1)
            assert os.path.exists(path) and not list(d.glob(".checkpoint.tmp*"))
        assert (tmp_path / "file" / "checkpoint").read_text() == "mine"


def test_any_variable_name_is_saved_and_the_manifests_own_is_refused(tmp_path):
    """Names went to np.savez as keyword arguments: a variable named allow_pickle was left
    out of the checkpoint without a word, and one named file crashed the save."""
    g = mf.Graph()
    with g.as_default():
        vs = [mf.Variable(np.full(3, i, np.float32), name=n)
              for i, n in enumerate(["allow_pickle", "file", "a/b"])]
        saver = mf.train.Saver()
        with pytest.raises(ValueError, match="__manifest__"):
            mf.train.Saver({"__manifest__": vs[0]})
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        path = saver.save(s, str(tmp_path / "ck"))
        for v in vs:
            s.run(v.assign(np.zeros(3, np.float32)))
        saver.restore(s, path)
        for i, v in enumerate(vs):
            np.testing.assert_array_equal(s.run(v), np.full(3, i, np.float32))


def test_two_savers_saving_into_one_directory_from_two_threads(tmp_path):
    """The state file's temporary was one per process: two threads' writes interleaved
    into a file that was not JSON, and latest_checkpoint said None from then on."""
    import threading

    errors = []

    def job(tag):
        g = mf.Graph()
        with g.as_default():
            v = mf.Variable(np.zeros(10, np.float32), name="v")
            saver = mf.train.Saver(max_to_keep=2)
        with mf.Session(graph=g) as s:
            s.run(v.initializer)
            for i in range(60):
                try:
                    saver.save(s, str(tmp_path / tag), global_step=i)
                except Exception as e:  # noqa: BLE001 - counted, and the test fails
                    errors.append(e)
    threads = [threading.Thread(target=job, args=(t,)) for t in ("model", "ema")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mf.train.latest_checkpoint(str(tmp_path)) in {str(tmp_path / "model-59.npz"),
                                                         str(tmp_path / "ema-59.npz")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint", "ema-58.npz", "ema-59.npz", "model-58.npz", "model-59.npz"]


def test_a_failed_save_leaves_no_temporary_behind(tmp_path):
    (tmp_path / "ck.npz").mkdir()  # something in the way of the checkpoint
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros(1000, np.float32), name="v")
        saver = mf.train.Saver()
    with mf.Session(graph=g) as s:
        s.run(v.initializer)
        with pytest.raises(OSError):
            saver.save(s, str(tmp_path / "ck"))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


def test_a_save_killed_mid_write_leaves_nothing_the_next_save_keeps(tmp_path):
    """SIGKILL runs no cleanup: each crash during a save left a hidden model-sized
    temporary for good. The next save sweeps those no live writer holds (a writer locks
    its temporary); a fresh one, or a file not named as ours, stays. An empty state file,
    what a power loss can leave of an un-synced rename, made latest_checkpoint None for
    good: every later save only warned."""
    from common.procs import hold_lock

    old = time.time() - 120
    for name in (".model-3.npz.tmp-abc", ".checkpoint.tmp-x", ".model-4.npz.tmp-live",
                 ".model-5.npz.tmp-new", ".notes"):
        (tmp_path / name).write_bytes(b"\0" * 1000)
        if name != ".model-5.npz.tmp-new":
            os.utime(tmp_path / name, (old, old))
    (tmp_path / "checkpoint").write_text("")
    live = hold_lock(tmp_path / ".model-4.npz.tmp-live")  # another Saver's save, ongoing
    g, w, b, bump, saver = _graph()
    try:
        with mf.Session(graph=g) as s:
            s.run(mf.global_variables_initializer())
            path = saver.save(s, str(tmp_path / "model"), global_step=5)
    finally:
        os.close(live)
    assert mf.train.latest_checkpoint(str(tmp_path)) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".model-4.npz.tmp-live", ".model-5.npz.tmp-new", ".notes", "checkpoint", "model-5.npz"]


def test_a_name_ending_in_npy_is_its_own_entry(tmp_path):
    """np.load names an entry without its .npy: read by that name, the variables "emb"
    and "emb.npy" both read the first one, and a healthy checkpoint failed its checksum."""
    g = mf.Graph()
    with g.as_default():
        a = mf.Variable(np.zeros(2, np.float32), name="emb")
        b = mf.Variable(np.ones(3, np.float32), name="emb.npy")
        saver = mf.train.Saver()
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        path = saver.save(s, str(tmp_path / "ck"))
        s.run([a.assign(np.full(2, 7.0, np.float32)), b.assign(np.full(3, 7.0, np.float32))])
        saver.restore(s, path)
        np.testing.assert_array_equal(s.run(a), np.zeros(2, np.float32))
        np.testing.assert_array_equal(s.run(b), np.ones(3, np.float32))


def test_restoring_from_a_directory_without_a_checkpoint_says_so():
    """restore(sess, latest_checkpoint(empty_dir)) said "no checkpoint at None.npz"; TF
    says it cannot load a save_path of None."""
    g, w, b, bump, saver = _graph()
    with mf.Session(graph=g) as s:
        with pytest.raises(ValueError, match="save_path when it is None"):
            saver.restore(s, None)


def test_a_saver_of_no_variables_is_refused_as_in_tf():
    with mf.Graph().as_default():
        with pytest.raises(ValueError, match="No variables to save"):
            mf.train.Saver()
