"""``train.get_or_create_global_step`` and the graph's collections, as TF 2.21's
``tf.compat.v1`` answered the same program (names, collections, the step after three
``[train, gs]`` runs)."""

import pytest

import systems.miniflow as mf


def test_the_global_step_is_one_variable_found_by_every_part_of_the_program():
    g = mf.Graph()
    with g.as_default():
        with mf.name_scope("model"):
            gs = mf.train.get_or_create_global_step()  # at the top level, not model/
            w = mf.Variable(1.0, name="w")
        assert (gs.name, gs.dtype) == ("global_step:0", mf.int64)
        assert mf.train.get_or_create_global_step() is gs is mf.train.get_global_step()
        train = mf.train.GradientDescentOptimizer(0.1).minimize(w * w, global_step=gs)
        names = [[v.name for v in mf.get_collection(k, scope)] for k, scope in (
            (mf.GraphKeys.GLOBAL_VARIABLES, None), (mf.GraphKeys.TRAINABLE_VARIABLES, "model"),
            (mf.GraphKeys.GLOBAL_STEP, None), (mf.GraphKeys.GLOBAL_VARIABLES, "nope"))]
        assert names == [["global_step:0", "model/w:0"], ["model/w:0"], ["global_step:0"], []]
        mf.add_to_collection(mf.GraphKeys.GLOBAL_STEP, w)
        with pytest.raises(TypeError, match="only one global step, found 2"):
            mf.train.get_global_step()
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for _ in range(3):
            _, step = s.run([train, gs])
        assert step == 3 and mf.train.global_step(s, gs) == 3
        assert type(mf.train.global_step(s, gs)) is int
