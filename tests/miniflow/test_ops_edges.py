"""Edge values and empty shapes, where the two CPU backends must agree with each other and
with torch (or TF, where its semantics differ): found by differential fuzzing."""

import numpy as np
import pytest
import torch

import systems.miniflow as mf

from .helpers import BACKENDS, evaluate, session


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_sigmoid_of_a_very_negative_float32_keeps_its_value_and_gradient(backend):
    """1 + tanh(x / 2) cancels for x < 0: float32 sigmoid(-20) came out 0 on the numpy
    backend, so log(sigmoid(x)) was -inf and its gradient NaN."""
    xs = np.array([-20.0, -17.0, -10.0, 0.0, 10.0, 30.0], np.float32)
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, xs.shape)
        y = mf.log(mf.sigmoid(x))
        (dx,) = mf.gradients(mf.reduce_sum(y), [x])
    got, grad = evaluate(g, [y, dx], {x: xs}, backend)
    t = torch.tensor(xs, requires_grad=True)
    want = torch.log(torch.sigmoid(t))
    want.sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_gradient_of_a_mean_with_an_empty_output_is_empty_not_a_zero_division(backend):
    """TF's _MeanGrad divides by max(output size, 1)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [0, 3])
        (dx,) = mf.gradients(mf.reduce_sum(mf.reduce_mean(x, axis=1)), [x])
    assert evaluate(g, dx, {x: np.zeros((0, 3), np.float32)}, backend).shape == (0, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_of_zero_classes_is_empty_on_both_backends(backend, op):
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 0])
        y = getattr(mf.nn, op)(x)
    assert evaluate(g, y, {x: np.zeros((2, 0), np.float32)}, backend).shape == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_integer_to_a_negative_power_is_an_error_on_both_backends(backend):
    """TF's safe_pow refuses it; torch's pow would answer [1, 0, -1, 0]."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.int32, [4])
        y = mf.placeholder(mf.int32, [])
        z = x ** y
    feeds = {x: np.array([1, 2, -1, 0], np.int32)}
    with pytest.raises(mf.errors.InvalidArgumentError, match="negative integer powers"):
        evaluate(g, z, {**feeds, y: np.int32(-1)}, backend)
    np.testing.assert_array_equal(evaluate(g, z, {**feeds, y: np.int32(2)}, backend),
                                  [1, 4, 1, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float16_mean_accumulates_in_float32_on_both_backends(backend):
    """3000 x 30 overflows a float16 sum (65504), not the mean: torch gives 30."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float16, [3000])
        m = mf.reduce_mean(x)
    got = evaluate(g, m, {x: np.full(3000, 30, np.float16)}, backend)
    assert got.dtype == np.float16 and float(got) == 30.0


def test_impossible_reshapes_and_one_hot_depths_are_build_errors_naming_the_op():
    with mf.Graph().as_default():
        x = mf.placeholder(mf.float32, [2, 3])
        with pytest.raises(mf.errors.GraphBuildError, match=r"Reshape: cannot reshape 6"):
            mf.reshape(x, [-1, 0])  # TF: cannot infer the missing size
        with pytest.raises(mf.errors.GraphBuildError, match=r"Reshape: sizes must be >= 0"):
            mf.reshape(x, [-2, -3])
        i = mf.placeholder(mf.int32, [2])
        with pytest.raises(mf.errors.GraphBuildError, match=r"OneHot: depth must be non-neg"):
            mf.one_hot(i, -1)


def test_windows_and_strides_below_one_and_empty_lists_are_errors_naming_the_op():
    """TF's shape functions refuse a window or stride below 1. They were taken: a max
    pool with strides -1 returned the windows' maxima reversed, an avg pool with ksize 0
    all NaN, and a conv with strides 0 a bare ZeroDivisionError; an empty concat or
    add_n was a bare IndexError."""
    with mf.Graph().as_default():
        x = mf.placeholder(mf.float32, [1, 4, 4, 1])
        f = mf.constant(np.ones((2, 2, 1, 1), np.float32))
        for build, msg in ((lambda: mf.nn.max_pool2d(x, 2, -1), r"MaxPool: strides -1"),
                           (lambda: mf.nn.avg_pool2d(x, 0, 1), r"AvgPool: ksize 0"),
                           (lambda: mf.nn.conv2d(x, f, 0), r"Conv2D: strides 0"),
                           (lambda: mf.nn.conv2d(x, f, [2, 1, 1, 1]),
                            r"Conv2D: strides \[2, 1, 1, 1\]")):
            with pytest.raises(mf.errors.GraphBuildError,
                               match=msg + r".*\(at .*test_ops_edges"):
                build()
        assert mf.nn.max_pool2d(x, [1, 2, 2, 1], [1, 2, 2, 1]).shape == (1, 2, 2, 1)
        with pytest.raises(ValueError, match="ConcatV2: values is an empty list"):
            mf.concat([], 0)
        with pytest.raises(ValueError, match="AddN: inputs is an empty list"):
            mf.add_n([])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_on_a_negative_axis_of_unknown_rank_agrees_on_both_backends(backend):
    """The axis stays -1 when the rank is unknown at build time; the torch backend (and
    so every GPU) built its output shape from it as if it were positive."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32)
        y = mf.gather(x, np.array([2, 0]), axis=-1)
        bad = mf.gather(x, np.array([0]), axis=-3)
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(evaluate(g, y, {x: xv}, backend), np.take(xv, [2, 0], -1))
    with pytest.raises(mf.errors.InvalidArgumentError, match="axis -3 is out of range"):
        evaluate(g, bad, {x: xv}, backend)


def test_the_gather_gradient_on_unknown_rank_names_the_op_and_the_line():
    with mf.Graph().as_default():
        p = mf.placeholder(mf.float32, None)
        i = mf.placeholder(mf.int32, [2])
        y = mf.gather(p, i)
        with pytest.raises(mf.errors.GraphBuildError, match=r"GatherV2: .*known rank.*at "):
            mf.gradients(mf.reduce_sum(y), [p])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_conv_with_no_input_channels_is_zeros_of_its_static_shape(backend):
    """An empty sum is 0; torch's conv2d returns an empty tensor for C_in = 0 instead."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [2, 4, 4, 0])
        f = mf.placeholder(mf.float32, [3, 3, 0, 5])
        y = mf.nn.conv2d(x, f, padding="VALID")
    got = evaluate(g, y, {x: np.zeros((2, 4, 4, 0), np.float32),
                          f: np.zeros((3, 3, 0, 5), np.float32)}, backend)
    assert y.shape == (2, 2, 2, 5)
    np.testing.assert_array_equal(got, np.zeros((2, 2, 2, 5), np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sign_of_nan_is_nan_and_so_is_the_gradient_of_abs_on_both_backends(backend):
    """torch.sign(NaN) is 0; TF and numpy keep NaN, so the torch backend must too, or a
    NaN gradient that check_numerics catches on the CPU vanishes on a GPU."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [3])
        (dabs,) = mf.gradients(mf.reduce_sum(mf.abs(x)), [x])
        y = mf.sign(x)
    got, grad = evaluate(g, [y, dabs], {x: np.array([np.nan, -2.0, 3.0], np.float32)}, backend)
    np.testing.assert_array_equal(got, [np.nan, -1.0, 1.0])
    np.testing.assert_array_equal(grad, [np.nan, -1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_known_only_at_run_time_are_checked_where_tensorflow_checks_them(backend):
    """A [None, 4] passes every build-time check against a [1, 4]; the kernels must refuse
    what would broadcast: AddN (a broadcast sum hands the (1, 4) input a (3, 4) gradient,
    and an optimizer step then grows a (1, 4) variable), the cross-entropy's labels (the
    numpy kernel gave every row the one label) and BiasAdd (a last dimension of 1)."""
    g = mf.Graph()
    with g.as_default():
        a, b = mf.placeholder(mf.float32, [None, 4]), mf.placeholder(mf.float32, [None, 4])
        s = mf.add_n([a, b])
        logits, labels = mf.placeholder(mf.float32, [None, 3]), mf.placeholder(mf.int32, [None])
        loss = mf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        v = mf.placeholder(mf.float32, [None, None])
        bias = mf.constant(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
        biased = mf.nn.bias_add(v, bias)
        free = mf.placeholder(mf.float32, None)
        any_bias = mf.nn.bias_add(v, free)
        dv, dbias = mf.gradients(mf.reduce_sum(biased * biased), [v, bias])
    ones = np.ones((3, 4), np.float32)
    with session(g, backend) as sess:
        with pytest.raises(mf.errors.InvalidArgumentError, match=r"AddN.*same shape"):
            sess.run(s, {a: ones, b: ones[:1]})
        with pytest.raises(mf.errors.InvalidArgumentError, match="same first dimension"):
            sess.run(loss, {logits: np.zeros((4, 3), np.float32), labels: [2]})
        with pytest.raises(mf.errors.InvalidArgumentError, match="BiasAdd.*biases"):
            sess.run(biased, {v: np.zeros((2, 1), np.float32)})
        for bad in (np.ones((4, 4), np.float32), np.float32(1.0)):  # a bias of rank known
            with pytest.raises(mf.errors.InvalidArgumentError, match="BiasAdd"):  # only now
                sess.run(any_bias, {v: np.zeros((4, 4), np.float32), free: bad})
        vals = np.arange(8, dtype=np.float32).reshape(2, 4)
        got, gv, gb = sess.run([biased, dv, dbias], {v: vals})
    t_v, t_b = torch.tensor(vals, requires_grad=True), torch.tensor([1.0, 2, 3, 4],
                                                                    requires_grad=True)
    want = t_v + t_b
    (want * want).sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy())
    np.testing.assert_allclose(gv, t_v.grad.numpy())
    np.testing.assert_allclose(gb, t_b.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_valid_conv_with_a_filter_sized_at_run_time_builds_and_matches_torch(backend):
    """VALID's output size depends on the filter's; unknown, it is unknown (as TF infers),
    not a bare TypeError from inside the shape function."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1, 6, 5, 2])
        f = mf.placeholder(mf.float32, [None, None, 2, 3])
        y = mf.nn.conv2d(x, f, 1, "VALID")
    assert y.shape == (1, None, None, 3)
    rng = np.random.default_rng(3)
    xs, fs = rng.normal(size=(1, 6, 5, 2)).astype(np.float32), \
        rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
    got = evaluate(g, y, {x: xs, f: fs}, backend)
    want = torch.nn.functional.conv2d(torch.tensor(xs).permute(0, 3, 1, 2),
                                      torch.tensor(fs).permute(3, 2, 0, 1))
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_matmul_fed_a_vector_at_run_time_is_refused_as_tf_refuses_it(backend):
    """With a rank unknown at build time numpy and torch multiplied the vector, and the
    training step then failed in ``gradients/MatMul_grad/MatMul_1``, an op the user never
    wrote. One known rank-1 side is refused at build time even if the other is unknown."""
    wv = np.arange(6, dtype=np.float32).reshape(3, 2)
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, None, name="a")
        w = mf.constant(wv)
        y, yt = mf.matmul(a, w), mf.matmul(w, a, transpose_a=True, transpose_b=True)
        with pytest.raises(mf.errors.GraphBuildError, match="MatMul: inputs must be at least"):
            mf.matmul(mf.constant([1.0, 2.0, 3.0]), a)
    m = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(evaluate(g, y, {a: m}, backend), m @ wv)
    np.testing.assert_array_equal(evaluate(g, yt, {a: m}, backend), (m @ wv).T)
    with pytest.raises(mf.errors.InvalidArgumentError,
                       match=r"MatMul: In\[0\] is not a matrix; shapes \(3,\) and \(3, 2\)"):
        evaluate(g, y, {a: np.ones(3, np.float32)}, backend)


def test_a_constant_of_a_shape_reshapes_its_values_and_pads_with_the_last_as_tf1():
    """TF1's constant(value, shape=): the values in order, the last repeated (its test
    testShapeInconsistent); numpy's broadcast gave [[1, 2], [1, 2]] and crashed with a bare
    numpy error on TF's own example, constant([1..6], shape=(2, 3))."""
    g = mf.Graph()
    with g.as_default():
        short, full = mf.constant([1, 2], shape=[2, 2]), mf.constant(range(1, 7), shape=(2, 3))
        fill = mf.constant(7.0, shape=[2])
        with pytest.raises(mf.errors.GraphBuildError,
                           match=r"Const: too many values: needed at most 5, received 7 for "
                                 r"shape \[5\] \(at .*test_ops_edges.py:\d+\)"):
            mf.constant(list(range(7)), shape=[5])
        for shape in ([None, 2], [-1, 2], [2.5], [True]):
            with pytest.raises(mf.errors.GraphBuildError, match=r"must be whole sizes >= 0"):
                mf.constant(1.0, shape=shape)
    assert evaluate(g, short).tolist() == [[1, 2], [2, 2]]
    assert evaluate(g, full).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert evaluate(g, fill).tolist() == [7.0, 7.0]
    with g.as_default():  # TF1: an empty shape takes any value; no values are zeros
        empty, zeros = mf.constant(0.0, shape=[0]), mf.constant([], shape=[3])
    assert evaluate(g, empty).shape == (0,) and evaluate(g, zeros).tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_where_with_a_vector_condition_picks_rows_as_tf1_and_where_v2_broadcasts(backend):
    """tf.compat.v1.where's doc: a vector condition with matrices chooses rows. mf.where
    was where_v2, which picks columns of a square input: silently other values. The
    gradient follows the rows too."""
    g = mf.Graph()
    with g.as_default():
        c = mf.constant([True, False])
        x = mf.Variable(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
        y = mf.constant([[5.0, 6.0], [7.0, 8.0]])
        rows, cols = mf.where(c, x, y), mf.where_v2(c, x, y)
        (gx,) = mf.gradients(mf.reduce_sum(rows), [x])
    with session(g, backend) as s:
        s.run(x.initializer)
        assert s.run(rows).tolist() == [[1, 2], [7, 8]]
        assert s.run(mf.where(c, 0.0, y)).tolist() == [[0, 0], [7, 8]]  # y the matrix
        assert s.run(cols).tolist() == [[1, 6], [3, 8]]
        assert s.run(gx).tolist() == [[1, 1], [0, 0]]


def test_one_hot_takes_its_dtype_from_its_values_and_an_axis_as_tf():
    """tf.one_hot: no dtype means that of on/off values (ints give int32), else float32;
    axis places the new axis. Integer values gave float32 here, so TF1 code combining the
    one-hot with int32 tensors failed to build; axis was a TypeError, and TF1's fifth
    positional (axis) was read as the dtype."""
    idx = np.array([0, 2], np.int32)
    g = mf.Graph()
    with g.as_default():
        i = mf.constant(idx)
        ints = mf.one_hot(i, 3, on_value=1, off_value=0)
        floats, by_dtype = mf.one_hot(i, 3), mf.one_hot(i, 3, dtype=mf.float64)
        first = mf.one_hot(i, 3, 5.0, -1.0, 0)  # axis 0: (depth, n)
        counted = mf.reduce_sum(ints * mf.constant(np.full((2, 3), 7, np.int32)), 1)
        with pytest.raises(TypeError, match="different dtypes"):
            mf.one_hot(i, 3, on_value=1, off_value=0.0)
        for bad in (2, -2):  # TF: -1, or 0..rank(indices)
            with pytest.raises(mf.errors.GraphBuildError, match=rf"axis {bad} must be -1 or "
                                                                 r"in 0..1"):
                mf.one_hot(i, 3, axis=bad)
        named = mf.one_hot(i, 3, axis=0, name="labels")  # the name is the result's
        with pytest.raises(TypeError, match="Expected int32, got 0.5"):
            mf.one_hot(i, 3, on_value=0.5, dtype=mf.int32)  # TF refuses, no silent cast
    assert ints.dtype == mf.int32 and floats.dtype == mf.float32
    assert by_dtype.dtype == mf.float64
    assert evaluate(g, counted).tolist() == [7, 7]
    np.testing.assert_array_equal(evaluate(g, first), np.where(idx == np.arange(3)[:, None],
                                                               5.0, -1.0))
    assert named.name == "labels:0" and named.shape == (3, 2)


# -- differences from real TF1 found by running the same graphs in tf.compat.v1 ----------
# (TensorFlow 2.21, eager execution disabled; the expected values below are TF's)

def test_a_variable_read_inside_control_dependencies_sees_the_update():
    """TF1's counter idiom: ``with control_dependencies([inc]): identity(counter)``. Every
    implicit read reused the snapshot made with the variable, outside the scope, so it
    ran before the update and the counter read 0, 1, 2 where TF reads 1, 2, 3."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(1.0)
        a = mf.assign(v, 5.0)
        with mf.control_dependencies([a]):
            reads = [mf.identity(v), v * 1.0, v.value(), v.read_value()]
        c = mf.Variable(0.0)
        inc = mf.assign_add(c, 1.0)
        with mf.control_dependencies([inc]):
            out = mf.identity(c)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        assert [float(r) for r in s.run(reads)] == [5.0] * 4
        assert [float(s.run(out)) for _ in range(3)] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_floordiv_is_tfs_floor_of_the_quotient(backend):
    """TF's FloorDiv of reals is floor(x / y); Python's // (numpy's, torch's) gives 9 for
    1.0 // 0.1 and NaN for -inf // 2."""
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(np.array([1.0, -0.5, -np.inf, 7.0, -7.0, 0.3], np.float32))
        y = mf.constant(np.array([0.1, np.inf, 2.0, 0.7, 0.7, 0.1], np.float32))
        i = mf.constant(np.array([7, -7, 7], np.int32)) // np.int32(2)
        out = [x // y, i]
    got, ints = evaluate(g, out, backend=backend)
    np.testing.assert_array_equal(got, [10.0, -0.0, -np.inf, 10.0, -10.0, 3.0])
    assert np.signbit(got[1]) and ints.tolist() == [3, -4, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_max_pool_pads_with_the_types_lowest_value(backend):
    """SAME max pooling padded with -inf, which no int32 holds: an OverflowError."""
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(np.arange(9, dtype=np.int32).reshape(1, 3, 3, 1) - 20)
        y = mf.nn.max_pool(x, [1, 2, 2, 1], [1, 2, 2, 1], "SAME")
    assert evaluate(g, y, backend=backend)[0, :, :, 0].tolist() == [[-16, -15], [-13, -12]]


def test_tf1_where_of_unknown_rank_picks_rows_when_it_runs():
    """With ranks unknown at build time the vector condition was broadcast as where_v2
    does: columns of a square input, a broadcast error for a 3x2 one."""
    g = mf.Graph()
    with g.as_default():
        c = mf.placeholder(mf.bool, None)
        x, y = mf.placeholder(mf.float32, None), mf.placeholder(mf.float32, None)
        w = mf.where(c, x, y)
        gx, gy = mf.gradients(mf.reduce_sum(w * 2.0), [x, y])
    feeds = {c: [True, False, True], x: np.ones((3, 2), np.float32),
             y: np.zeros((3, 2), np.float32)}
    got, dx, dy = evaluate(g, [w, gx, gy], feeds)
    assert got.tolist() == [[1, 1], [0, 0], [1, 1]]
    assert dx.tolist() == [[2, 2], [0, 0], [2, 2]] and dy.tolist() == [[0, 0], [2, 2], [0, 0]]


def test_static_shapes_that_tf_infers_are_inferred():
    """The gradient of a gather had unknown rank (TF: the variable's shape), and several
    shape functions gave up on an unknown rank or a dimension another input knew."""
    g = mf.Graph()
    with g.as_default():
        u = mf.placeholder(mf.float32, None)
        a = mf.Variable(np.ones((5, 3), np.float32))
        (ga,) = mf.gradients(mf.reduce_sum(mf.gather(a, [2, 0, 0])), [a])
        f = mf.constant(np.ones((3, 3, 1, 4), np.float32))
        got = [ga, mf.reduce_sum(u), mf.transpose(u, [2, 0, 1]), mf.nn.conv2d(u, f, 1, "SAME"),
               mf.nn.max_pool(u, 2, 2, "SAME"),
               mf.concat([mf.placeholder(mf.float32, [None, None]),
                          mf.placeholder(mf.float32, [2, 5])], 1),
               mf.add_n([mf.placeholder(mf.float32, [None, 3]),
                         mf.placeholder(mf.float32, [2, None])])]
    assert [t.get_shape().as_list() for t in got] == [
        [5, 3], [], [None, None, None], [None, None, None, 4], [None] * 4, [2, None], [2, 3]]
    assert evaluate(g, ga).tolist() == [[2.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3, [0.0] * 3]


def test_ordering_comparisons_refuse_bools_and_repeated_reduction_axes_are_refused():
    """TF registers Less/Greater... for real numbers only (Equal takes bools), and refuses
    an axis named twice; here numpy's False < True and one reduction answered."""
    g = mf.Graph()
    with g.as_default():
        b = mf.constant([True, False])
        assert mf.equal(b, b).dtype == mf.bool
        for op in (mf.less, mf.greater, mf.less_equal, mf.greater_equal):
            with pytest.raises(TypeError, match="needs numeric inputs"):
                op(b, b)
        with pytest.raises(ValueError, match="name a dimension twice"):
            mf.reduce_sum(mf.constant(np.ones((2, 3))), axis=[1, -1])


def test_the_gradient_of_pow_in_its_exponent_is_zero_at_minus_infinity():
    """TF masks log(x) for x <= 0 with zeros_like(x); x * 0.0 is NaN at -inf."""
    g = mf.Graph()
    with g.as_default():
        x = mf.constant(np.array([-np.inf, 2.0], np.float32))
        y = mf.constant(np.array([0.0, 3.0], np.float32))
        (gy,) = mf.gradients(x ** y, [y])
    np.testing.assert_allclose(evaluate(g, gy), [0.0, 8.0 * np.log(2.0)], rtol=1e-6)


def test_the_second_derivative_of_relu_in_its_input_is_zero_not_unconnected():
    """TF's _ReluGradGrad gives zeros_like(features); None made gradients() answer None."""
    g = mf.Graph()
    with g.as_default():
        a = mf.constant(np.array([-1.0, 2.0], np.float32))
        b = mf.constant(np.array([3.0, 4.0], np.float32))
        (da,) = mf.gradients(mf.reduce_sum(mf.nn.relu(a) * b), [a])
        (dda,) = mf.gradients(mf.reduce_sum(da * b), [a])
    assert dda is not None and evaluate(g, dda).tolist() == [0.0, 0.0]


def test_variables_and_slots_made_inside_control_dependencies_do_not_inherit_them():
    """TF builds a variable (and an optimizer its slots) under init_scope. Here the
    UPDATE_OPS idiom around minimize made Adam's slots' initializers need the update's
    feed, and a variable made in the scope ran the scope's op on every read."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2], name="x")
        w = mf.Variable(np.array([[1.0], [2.0]], np.float32), name="w")
        moving = mf.Variable(np.zeros(2, np.float32), False, name="moving_mean")
        update = mf.assign(moving, moving * 0.9 + mf.reduce_mean(x, 0) * 0.1)
        with mf.control_dependencies([update]):
            train = mf.train.AdamOptimizer(0.1).minimize(mf.reduce_sum(mf.matmul(x, w) ** 2))
        step = mf.Variable(0, name="step")
        inc = mf.assign_add(step, 1)
        with mf.control_dependencies([inc]):
            v = mf.Variable(5.0, name="v")
            out = v * 2.0
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())  # needed x's feed before
        s.run(train, {x: [[1.0, 1.0]]})
        np.testing.assert_allclose(s.run(moving), [0.1, 0.1], rtol=1e-6)
        np.testing.assert_allclose(s.run(w).ravel(), [0.9, 1.9], rtol=1e-6)
        s.run(step.initializer)
        s.run(v.initializer)
        assert (s.run(step), s.run(v), s.run(step)) == (0, 5.0, 0)
        assert (s.run(out), s.run(step)) == (10.0, 1)  # only the op built in the scope


def test_tf1_optimizer_names_and_checks():
    """Slots are named after the variable and the optimizer (TF's slot_creator: w/Adam,
    w/Adam_1, w/Momentum; they were w/Adam_m...), Adam's beta powers live in the caller's
    scope, apply_gradients with no gradient at all is TF's ValueError (it built a train
    op that did nothing), and a dtype mismatch is a TypeError, as TF raises it."""
    g = mf.Graph()
    with g.as_default():
        with mf.name_scope("model"):
            w = mf.Variable(np.array([1.0, 2.0], np.float32), name="w")
        loss = mf.reduce_sum(w * w)
        with mf.name_scope("opt"):
            mf.train.AdamOptimizer(0.1).minimize(loss)
        mf.train.MomentumOptimizer(0.1, 0.9).minimize(loss)
        names = [v.name for v in mf.global_variables() if v not in mf.trainable_variables()]
        assert sorted(names) == ["model/w/Adam:0", "model/w/Adam_1:0", "model/w/Momentum:0",
                                 "opt/beta1_power:0", "opt/beta2_power:0"]
        g.get_tensor_by_name("model/w/Adam_1:0")
        x = mf.placeholder(mf.float32, [2])
        (gw,) = mf.gradients(mf.reduce_sum(x * 3.0), [w])
        gd = mf.train.GradientDescentOptimizer(0.1)
        with pytest.raises(ValueError, match="No gradients provided for any variable"):
            gd.apply_gradients([(gw, w)])
        with pytest.raises(ValueError, match="No variables provided"):
            gd.apply_gradients([])
        for bad in (lambda: w + np.float64(1.0) * mf.constant(1.0, mf.float64),
                    lambda: mf.concat([w, mf.constant([1], mf.int32)], 0),
                    lambda: mf.gather(w, mf.constant([0.0])),
                    lambda: mf.assign(w, mf.constant([1.0, 2.0], mf.float64))):
            with pytest.raises(TypeError):
                bad()


def test_a_variable_initialised_from_another_initialises_in_one_step():
    """Variable(v + 1.0) read v's snapshot, which nothing ordered after v's initializer:
    with an initial value that takes an op to compute, the read ran first and every
    initialisation failed. TF1 guards such reads; here a read follows the initializer
    of its variable in any step that runs both (and initialized_value() exists)."""
    g = mf.Graph()
    with g.as_default():
        p = mf.placeholder(mf.float32, [2])
        v = mf.Variable(p * 2.0, name="v")
        w = mf.Variable(v + 1.0, name="w")
        u = mf.Variable(v.initialized_value() * 3.0, name="u")
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer(), {p: [1.0, 2.0]})
        assert [a.tolist() for a in s.run([v, w, u])] == [[2.0, 4.0], [3.0, 5.0], [6.0, 12.0]]


def test_mends_of_the_tf1_changes():
    """A review of the changes above: a Variable fed or fetched inside control_dependencies
    is its one read (a fresh read took the feed and fed nothing); concat on axis -1 whose
    first input has unknown rank; TF1 Select's shape when the condition broadcasts;
    initialized_value is the current value; the initializer is known by the variable,
    not by its name; a 'v/' variable keeps its name; an optimizer serves two graphs;
    conv2d names a filter of the wrong rank."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(1.0, name="v")
        y = v * 2.0
        p = mf.placeholder(mf.float32, [2])
        mf.identity(p, name="u/Assign")  # takes the initializer's usual name first
        u = mf.Variable(p * 2.0, name="u")
        w = mf.Variable(u + 1.0, name="w")
        c = mf.placeholder(mf.bool)
        r = mf.where(c, 1.0, 0.0)
        x = mf.placeholder(mf.float32, [])
        (dx,) = mf.gradients(mf.reduce_sum(mf.where(c, x * 1.0, x * 0.0)), [x])
        cat = mf.concat([mf.placeholder(mf.float32), mf.placeholder(mf.float32, [2, 3]),
                         mf.placeholder(mf.float32, [2, 4])], axis=-1)
        slash = mf.Variable(np.float32(3.0), name="s/")
        with pytest.raises(ValueError, match="filter must be HWIO"):
            mf.nn.conv2d(mf.placeholder(mf.float32), mf.placeholder(mf.float32, [3, 3, 1]),
                         1, "SAME")
    assert r.shape is None and cat.shape == (2, None) and slash.op.name == "s/"
    cv = np.array([[True, False, True], [False, False, True]])
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer(), {p: [1.0, 2.0]})
        assert s.run(w).tolist() == [3.0, 5.0]
        with mf.control_dependencies([mf.group()]):
            assert s.run(y, {v: 10.0}) == 20.0 and s.run(v) == 1.0
        assert s.run(r, {c: cv}).shape == (2, 3) and s.run(dx, {c: cv, x: 2.0}) == 3.0
        s.run(v.assign(5.0))
        with g.as_default():
            target = mf.Variable(v.initialized_value(), name="target")
        s.run(target.initializer)
        assert s.run(target) == 5.0
    opt = mf.train.AdamOptimizer(0.1)
    for _ in range(2):
        with mf.Graph().as_default():
            z = mf.Variable(np.ones(2, np.float32))
            train = opt.minimize(mf.reduce_sum(z * z))
            with mf.Session() as s:
                s.run(mf.global_variables_initializer())
                s.run(train)
                np.testing.assert_allclose(s.run(z), [0.9, 0.9], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_xent_gradient_of_transposed_logits_subtracts_the_labels(backend):
    """The numpy kernel wrote its "-1 at the label" into a copy when the logits were a
    transposed (F-ordered) view: the gradient was softmax, not softmax - one_hot."""
    g = mf.Graph()
    with g.as_default():
        h = mf.Variable(np.array([[0.0, 1.0], [0.0, -1.0]], np.float32))  # classes x batch
        logits = mf.transpose(h)
        loss = mf.reduce_sum(mf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=mf.constant(np.array([1, 0], np.int64)), logits=logits))
        (dl,) = mf.gradients(loss, [logits])
    np.testing.assert_allclose(evaluate(g, dl, backend=backend),
                               [[0.5, -0.5], [-0.11920292, 0.11920292]], rtol=1e-5)


def test_gradients_carry_their_inputs_static_shapes_and_unknown_ranks_are_not_scalars():
    """TF sets each input gradient's static shape from the input (gradients_util.py); a
    [3, 2] variable's gradient was (None, 2), and an embedding lookup concatenated with
    other features could not be differentiated at all. A shape of unknown rank had
    len() 0 and printed (), as a scalar's does."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, None])
        w = mf.Variable(np.ones((3, 2), np.float32))
        (gw,) = mf.gradients(mf.reduce_sum(mf.matmul(x, w)), [w])
        p = mf.Variable(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
        idx = mf.placeholder(mf.int64, [None])
        y = mf.concat([mf.gather(p, idx), mf.constant([5.0, 6.0])], 0)
        (gp,) = mf.gradients(mf.reduce_sum(y * y), [p])
        unknown = mf.placeholder(mf.float32).get_shape()
        shapes = [mf.nn.bias_add(w, mf.placeholder(mf.float32)),
                  mf.nn.bias_add(mf.placeholder(mf.float32, [4, None, None, None]),
                                 mf.constant([1.0])),
                  mf.nn.conv2d(mf.placeholder(mf.float32, [4, 3, 3, 1]),
                               mf.placeholder(mf.float32), 1, "VALID")]
    assert gw.get_shape().as_list() == [3, 2]
    assert [t.shape for t in shapes] == [(3, 2), (4, None, None, 1), (4, None, None, None)]
    assert evaluate(g, gp, {idx: [0, 0, 3]}).tolist() == [4.0, 0.0, 0.0, 8.0]
    assert str(unknown) == "<unknown>" and unknown.ndims is None
    for probe in (len, list):
        with pytest.raises(ValueError, match="unknown rank"):
            probe(unknown)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalars_of_unknown_rank_transpose_and_refuse_reduction_axes_on_both_backends(backend):
    """Run against TF on the torch backend too: torch's permute() of a 0-d tensor needed
    a tuple, and torch reduced a scalar over axis 0 or -1 where TF (and numpy) refuse;
    two ellipses in one index built a made-up shape (numpy failed when it ran, torch
    answered x)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, None)
        t = mf.transpose(x)
        bad = [mf.reduce_sum(x, 0), mf.reduce_max(x, -1), mf.argmax(x, 0)]
        with pytest.raises(ValueError, match="Multiple ellipses"):
            x[..., ...]
    with session(g, backend) as s:
        assert s.run(t, {x: np.float32(3.0)}) == 3.0
        for op in bad:
            with pytest.raises(mf.InvalidArgumentError, match="Invalid reduction dimension"):
                s.run(op, {x: np.float32(3.0)})


def test_a_device_scope_stays_on_updates_of_a_variable_with_no_device_and_shapes_test_false():
    """Reads and updates take their variable's device over the open scope; a variable
    with none cleared the scope (the request was lost). bool() of an unknown-rank shape
    is False, as TF's (it raised once len() did)."""
    g = mf.Graph()
    with g.as_default():
        v = mf.Variable(np.zeros(3, np.float32), name="v")
        with mf.device("/cpu:0"):
            a, r = v.assign_add(np.ones(3, np.float32)), v.read_value()
        assert a.op.device == r.op.device == "/cpu:0"
        assert not mf.placeholder(mf.float32).get_shape()
        assert mf.placeholder(mf.float32, [2]).get_shape()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_safe_sqrt_idiom_trains_where_sqrt_of_zero_gets_no_gradient(backend):
    """``where(d2 > 0, sqrt(d2), 0)``, the pairwise-distance guard: TF's SqrtGrad returns 0
    where the incoming gradient is 0, so the masked diagonal sends back 0. Ours built
    ``g * 0.5 / y``, 0 / 0 = NaN there, and one step made every weight NaN."""
    g = mf.Graph()
    with g.as_default():
        x = mf.Variable(np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]], np.float32))
        d2 = mf.reduce_sum(mf.square(x[:, None, :] - x[None, :, :]), axis=-1)  # diagonal 0
        loss = mf.reduce_mean(mf.where(d2 > 0.0, mf.sqrt(d2), mf.zeros_like(d2)))
        step = mf.train.GradientDescentOptimizer(0.1).minimize(loss)
        r = mf.placeholder(mf.float64, [2])
        (dr,) = mf.gradients(mf.sqrt(r), [r], grad_ys=mf.constant([0.0, 1.0], mf.float64))
        (d2r,) = mf.gradients(mf.gradients(mf.reduce_sum(mf.sqrt(r)), [r])[0], [r])
    with session(g, backend) as s:
        s.run(mf.global_variables_initializer())
        s.run(step)
        np.testing.assert_allclose(s.run(x), [[0.0421, 0.9901], [1.9644, 0.0257],
                                              [0.9935, 0.9843]], atol=1e-4)  # TF's values
        np.testing.assert_array_equal(s.run(dr, {r: [0.0, 4.0]}), [0.0, 0.25])
        # the second derivative, through SqrtGrad's own gradient: -1 / (4 r^1.5)
        np.testing.assert_allclose(s.run(d2r, {r: [1.0, 4.0]}), [-0.25, -1 / 32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w, kw, stride_w", [(3, 3, 2), (4, 3, 3)])
def test_a_one_channel_conv_one_column_wide_with_a_width_stride_of_2_or_more(backend, w, kw,
                                                                              stride_w):
    """A text CNN's layer (``[batch, time, emb, 1]``, a filter as wide or nearly as wide as
    the input, a width stride past it): torch read the NHWC view of a one-channel float32
    input as channels-last, and its CPU kernel then got output rows wrong (found against
    TF)."""
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((2, 4, w, 1)).astype(np.float32)
    fv = rng.standard_normal((3, kw, 1, 2)).astype(np.float32)
    want = np.array([[[[np.sum(xv[n, i:i + 3, :kw, 0] * fv[:, :, 0, o]) for o in range(2)]]
                      for i in (0, 1)] for n in range(2)])  # VALID: one output column
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 4, w, 1])
        y = mf.nn.conv2d(x, mf.constant(fv), strides=[1, 1, stride_w, 1], padding="VALID")
    np.testing.assert_allclose(evaluate(g, y, {x: xv}, backend), want, rtol=1e-5, atol=1e-6)


def test_stop_gradients_and_var_list_take_one_and_a_saver_refuses_a_tensor(tmp_path):
    """As TF1: ``stop_gradients=t`` is one tensor, like ``ys`` and ``xs``, and
    ``minimize(var_list=w)`` one variable (both were TypeErrors, "not iterable");
    ``Saver([w * 2.0])`` is a TypeError at once (it was taken, and failed at save as an
    uninitialised variable), while a variable's own tensor ``w:0`` saves and restores;
    asking for a second output of a one-output op says so in words."""
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, [], name="a")
        b = a * 3.0
        (da,) = mf.gradients(b * a, [a], stop_gradients=b)  # b held constant: d/da = b
        w = mf.Variable([1.0], name="w")
        with pytest.raises(TypeError, match="Variable to save is not a Variable"):
            mf.train.Saver([w * 2.0])
        with pytest.raises(TypeError, match="should be passed in a dict or a list"):
            mf.train.Saver(w)
        with pytest.raises(ValueError, match="two variables have the same name: w"):
            mf.train.Saver([w, g.get_tensor_by_name("w:0")])
        saver = mf.train.Saver([g.get_tensor_by_name("w:0")])  # a variable's own tensor
        step = mf.train.GradientDescentOptimizer(1.0).minimize(mf.reduce_sum(w * a),
                                                                var_list=w)  # one, as TF1
        with pytest.raises(KeyError, match="'a' has 1 output, so no output 1"):
            g.get_tensor_by_name("a:1")
    with mf.Session(graph=g) as s:
        assert s.run(da, {a: 2.0}) == 6.0
        s.run(w.initializer)
        saved = saver.save(s, str(tmp_path / "m"))
        s.run(step, {a: 2.0})
        assert s.run(w).tolist() == [-1.0]
        saver.restore(s, saved)
        assert s.run(w).tolist() == [1.0]


def test_var_lists_may_nest_as_in_tf1(tmp_path):
    """TF1 flattens a ``var_list`` (``nest.flatten``): ``compute_gradients`` takes nested
    lists, tuples and dicts (a dict's values in key order), and a Saver nested lists.
    The orders are what TF 2.21's ``tf.compat.v1`` returned for the same calls; here
    both raised TypeError or saved a list as one variable."""
    g = mf.Graph()
    with g.as_default():
        a, b, c = (mf.Variable(v, name=n) for v, n in ((1.0, "a"), (2.0, "b"), (3.0, "c")))
        loss = a * b * c
        opt = mf.train.GradientDescentOptimizer(0.1)
        for var_list, want in (([[a, b], c], "abc"), ((a, [b]), "ab"),
                               ({"y": b, "x": a}, "ab"), ([a, (b, [c])], "abc")):
            got = [(v.op.name, gr) for gr, v in opt.compute_gradients(loss, var_list)]
            assert [n for n, _ in got] == list(want)
        saver = mf.train.Saver([[a], ({"k": c},)])
    with mf.Session(graph=g) as s:
        s.run([a.initializer, b.initializer, c.initializer])
        assert s.run([gr for _, gr in got]) == [6.0, 3.0, 2.0]  # d(abc)/da, /db, /dc
        path = saver.save(s, str(tmp_path / "m"))
        s.run([a.assign(7.0), c.assign(8.0)])
        saver.restore(s, path)
        assert s.run([a, b, c]) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_filter_with_no_window_fed_at_run_time_is_refused(backend):
    """A (0, 2, 1, 1) filter under SAME made a (1, 6, 5, 1) output from a 5x5 input,
    larger than the op's own shape rule allows; TF's Conv2D refuses it when it runs."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [1, 5, 5, 1])
        f = mf.placeholder(mf.float32)
        y = mf.nn.conv2d(x, f, strides=1, padding="SAME")
    with session(g, backend) as s, pytest.raises(mf.InvalidArgumentError, match="no window"):
        s.run(y, {x: np.ones((1, 5, 5, 1), np.float32), f: np.zeros((0, 2, 1, 1), np.float32)})


def test_softmax_names_a_tensor_axis_as_the_problem():
    """It failed on ``int(axis)`` with "int() argument must be ... not 'Tensor'". (TF1
    takes a tensor for any axis but the last: listed in docs/miniflow/side-by-side.md.)"""
    with mf.Graph().as_default():
        x = mf.placeholder(mf.float32, [2, 3])
        with pytest.raises(TypeError, match="Softmax: axis must be a Python int"):
            mf.nn.softmax(x, axis=mf.constant(0))
        with pytest.raises(TypeError, match="LogSoftmax: axis must be a Python int"):
            mf.nn.log_softmax(x, axis=mf.Variable(0))


# -- behaviours of the TF1 changes that no test above pinned (a mutation review) ---------

@pytest.mark.parametrize("backend", BACKENDS)
def test_floordiv_and_integer_max_pool_of_fed_values_run_each_backends_kernel(backend):
    """The two tests above take constants, which the plan folds with the numpy kernel, so
    the torch kernels never ran: torch's own ``floor_divide`` (1.0 // 0.1 = 9, -inf // 2 =
    NaN, TF: 10 and -inf) and a zero padding of an integer max_pool both passed them."""
    g = mf.Graph()
    with g.as_default():
        x, y = mf.placeholder(mf.float32, [3]), mf.placeholder(mf.float32, [3])
        p = mf.placeholder(mf.int32, [1, 3, 3, 1])
        out = [x // y, mf.nn.max_pool(p, [1, 2, 2, 1], [1, 2, 2, 1], "SAME")]
    q, pooled = evaluate(g, out, {x: [1.0, -np.inf, 7.0], y: [0.1, 2.0, 0.7],
                                  p: np.arange(9, dtype=np.int32).reshape(1, 3, 3, 1) - 20},
                         backend)
    np.testing.assert_array_equal(q, [10.0, -np.inf, 10.0])  # TF's values
    assert pooled[0, :, :, 0].tolist() == [[-16, -15], [-13, -12]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_second_derivative_through_sqrt_grad_in_its_incoming_gradient(backend):
    """SqrtGrad(y, dy) = 0.5 dy / y has d/d dy = 0.5 / y (TF's _SqrtGradGrad). The test
    above differentiates only through y (dy a constant 1); in x * sqrt(x) the incoming
    gradient is x, and f'' = 0.75 / sqrt(x) (a gradient of dy of 1 / y, or none, gave
    1.25 / sqrt(x) or 0.25 / sqrt(x))."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float64, [2])
        (d1,) = mf.gradients(mf.reduce_sum(x * mf.sqrt(x)), [x])
        (d2,) = mf.gradients(mf.reduce_sum(d1), [x])
    got1, got2 = evaluate(g, [d1, d2], {x: [1.0, 4.0]}, backend)
    np.testing.assert_allclose(got1, [1.5, 3.0])
    np.testing.assert_allclose(got2, [0.75, 0.375])


def test_matmul_adjoints_are_transposes_on_either_operand():
    """With no complex dtypes, ``adjoint_a``/``adjoint_b`` are the transposes (TF1's
    matmul); the signature test checks adjoint_a only, and adjoint_b could be ignored."""
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [2.0, 3.0]])
    g = mf.Graph()
    with g.as_default():
        ta, tb = mf.constant(a), mf.constant(b)
        out = [mf.matmul(ta, tb, adjoint_b=True), mf.matmul(ta, tb, adjoint_a=True),
               mf.matmul(ta, tb, adjoint_a=True, transpose_b=True)]
    got = evaluate(g, out)
    for r, want in zip(got, (a @ b.T, a.T @ b, a.T @ b.T), strict=True):
        np.testing.assert_array_equal(r, want)


def test_a_variables_own_tensor_fetched_inside_control_dependencies_runs_nothing_else():
    """Fetching a variable's ``v:0`` is its one snapshot (session._value_of_ref), as a
    fetch of the Variable is: a fresh read made there would run the ops of an open
    ``control_dependencies`` (the counter went to 3) and add an op to the graph per run."""
    g = mf.Graph()
    with g.as_default():
        c = mf.Variable(0.0, name="c")
        v = mf.Variable(7.0, name="v")
        inc = mf.assign_add(c, 1.0)
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        n = len(g.get_operations())
        with g.control_dependencies([inc]):
            got = [float(s.run("v:0")) for _ in range(3)] + [float(s.run(v.op.outputs[0]))]
        assert got == [7.0] * 4
        assert float(s.run(c)) == 0.0 and len(g.get_operations()) == n


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_first_axis_counted_from_the_end_of_an_unknown_rank_is_valid(backend):
    """Axes of a tensor whose rank is unknown are checked when it runs, with TF's range
    [-rank, rank): -rank is the first axis (the test above checks only a scalar, where
    an off-by-one refusing -rank also passes)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, None)
        out = [mf.reduce_sum(x, -2), mf.reduce_max(x, [-2, -1]), mf.argmax(x, -2)]
    with session(g, backend) as s:
        s_, m, a = s.run(out, {x: np.arange(6, dtype=np.float32).reshape(2, 3)})
        assert s_.tolist() == [3.0, 5.0, 7.0] and m == 5.0 and a.tolist() == [1, 1, 1]
        with pytest.raises(mf.InvalidArgumentError, match="Invalid reduction dimension"):
            s.run(out[0], {x: np.ones(3, np.float32)})


def test_tf1_select_of_unknown_rank_refuses_a_condition_that_is_not_bool():
    """TF's Select takes a bool condition; when where() falls back to Select (a rank the
    graph does not know) a float condition would be taken as "non-zero" by the kernel."""
    g = mf.Graph()
    with g.as_default():
        c = mf.placeholder(mf.float32, None)
        with pytest.raises(TypeError, match="condition must be bool"):
            mf.where(c, mf.placeholder(mf.float32, None), mf.placeholder(mf.float32, None))


def test_ones_like_and_zeros_like_take_the_dtype_asked_for_a_partly_known_shape():
    """TF1's second argument is the dtype; ones_like of a fully known shape is a constant,
    of any other a Fill, and the Fill must be of the dtype asked too (it was x's)."""
    g = mf.Graph()
    with g.as_default():
        x = mf.placeholder(mf.float32, [None, 2])
        out = [mf.ones_like(x, mf.int32), mf.zeros_like(x, mf.int32)]
    assert [t.dtype for t in out] == [mf.int32, mf.int32]
    ones, zeros = evaluate(g, out, {x: np.zeros((3, 2), np.float32)})
    assert ones.dtype == zeros.dtype == np.int32 and ones.tolist() == [[1, 1]] * 3


def test_not_equal_takes_bools_as_equal_does():
    """TF registers Equal and NotEqual for every type (bools too); only the ordering
    comparisons refuse bools. The test above checks equal only."""
    g = mf.Graph()
    with g.as_default():
        b = mf.constant([True, False])
        ne = mf.not_equal(b, mf.constant([True, True]))
    assert ne.dtype == mf.bool and evaluate(g, ne).tolist() == [False, True]


def test_default_names_are_tf1s():
    """The names TF 2.21's ``tf.compat.v1`` gave the same calls (leaving out the
    constants TF makes for shapes, axes and Python numbers, which miniflow keeps as
    attributes): operators are named after themselves, functions mostly after their op
    type, and uniqueness ignores case ("x" after "X" is "x_1", as in TF)."""
    g = mf.Graph()
    with g.as_default():
        a = mf.placeholder(mf.float32, [2], name="p")
        i = mf.placeholder(mf.int32, [2], name="q")
        m = mf.placeholder(mf.float32, [2, 2], name="m")
        made = [a + a, a - a, a * a, a / a, -a, a // a, abs(a), a > a, a[0], 1.0 + a,
                mf.add(a, a), mf.subtract(a, a), mf.multiply(a, a), mf.divide(a, a),
                mf.transpose(m), mf.concat([a, a], 0), mf.one_hot(i, 3),
                mf.zeros_like(a), mf.floordiv(a, a), mf.truediv(a, a),
                mf.constant(1.0, name="X"), mf.constant(1.0, name="x"),
                mf.constant(1.0, name="X_1")]
    assert [t.op.name for t in made if not t.op.name.startswith("Const")] == [
        "add", "sub", "mul", "truediv", "Neg", "floordiv", "Abs", "Greater",
        "strided_slice", "add_1", "Add_2", "Sub_1", "Mul_1", "truediv_1", "transpose",
        "concat", "one_hot", "zeros_like", "floordiv_1", "truediv_2", "X", "x_1", "X_1_1"]
    h = mf.Graph()
    with h.as_default():
        x = mf.placeholder(mf.float32, [2, 2])
        i = mf.placeholder(mf.int32, [2])
        made = [mf.div(x, x), mf.div(i, i), mf.strided_slice(x, [0], [1], [1]), x @ x, x @ x]
    assert [t.op.name for t in made] == ["div", "div_1", "StridedSlice", "matmul", "matmul_1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_differentiates_ids_of_unknown_shape(backend):
    """``ids = placeholder(int32)`` (no shape, common in TF1 code) made the gradient of
    ``gather(params, ids)`` a GraphBuildError, "needs indices of known rank"; TF's
    _GatherV2Grad flattens the ids and the gradient's index axes instead. Oracle: the
    scatter-add of ``dL/dy = 3y`` at the ids along the axis (the same values TF 2.21
    gave), for ids of rank 2, 0 and 1, with other axes of ``params`` unknown too."""
    pv = np.arange(24, dtype=np.float32).reshape(4, 3, 2) / 10
    for pshape, axis in (([None, 3, 2], 0), ([4, None, 2], 0), ([None, 3, None], 2)):
        g = mf.Graph()
        with g.as_default():
            p = mf.placeholder(mf.float32, pshape)
            ids = mf.placeholder(mf.int32)
            y = mf.gather(p, ids, axis=axis)
            (dp,) = mf.gradients(mf.reduce_sum(y * y * 1.5), [p])
        with session(g, backend) as s:
            for iv in ([[1, 0], [1, 1]], 1, [0]):
                want = np.zeros_like(pv)
                for i in np.ravel(iv):  # each id sends back 3 * its own slice
                    at = tuple(i if d == axis else slice(None) for d in range(3))
                    want[at] += 3 * pv[at]
                np.testing.assert_allclose(s.run(dp, {p: pv, ids: np.array(iv)}), want,
                                           rtol=1e-6, err_msg=f"{pshape} {axis} {iv}")


def test_an_embedding_looked_up_by_ids_of_unknown_shape_trains_as_in_tf1():
    """Three Adam steps on ``gather(emb, ids)`` with ids fed as (2, 2), (1,) and a scalar:
    the weights TF 2.21's ``tf.compat.v1`` ended with, to 5 decimals."""
    g = mf.Graph()
    with g.as_default():
        emb = mf.Variable(np.arange(8, dtype=np.float32).reshape(4, 2) / 4, name="emb")
        ids = mf.placeholder(mf.int32, name="ids")
        step = mf.train.AdamOptimizer(0.1).minimize(mf.reduce_sum(mf.gather(emb, ids) ** 2.0))
    with mf.Session(graph=g) as s:
        s.run(mf.global_variables_initializer())
        for iv in ([[0, 1], [1, 3]], [2], 3):
            s.run(step, {ids: np.array(iv)})
        np.testing.assert_allclose(s.run(emb).ravel(), [
            0.0, 0.0312, 0.2812, 0.5312, 0.86806, 1.11806, 1.25184, 1.50172], atol=2e-5)


def test_tf1_tutorial_mistakes_get_tf1s_exception_or_a_whole_number_feed():
    """From TF1 tutorial-style programs run on both: a device that does not exist is
    TF's InvalidArgumentError (``except tf.errors.InvalidArgumentError`` missed our
    ValueError), and labels read as floats feed an int32 placeholder when they are whole
    numbers (TF1 casts any float; a fraction, which TF1 would cut, is refused here)."""
    g = mf.Graph()
    with g.as_default():
        with mf.device("/gpu:7"):
            b = mf.constant([1.0, 2.0]) + 1.0
        labels = mf.placeholder(mf.int32, [None])
    with mf.Session(graph=g) as s:
        with pytest.raises(mf.InvalidArgumentError, match="/gpu:7 was requested"):
            s.run(b)
        got = s.run(labels, {labels: np.array([1.0, 0.0, 9.0])})
        assert got.dtype == np.int32 and got.tolist() == [1, 0, 9]
        for bad in ([1.7, 2.0], [np.nan], [3e9]):
            with pytest.raises(TypeError, match="not whole numbers, or out of its range"):
                s.run(labels, {labels: bad})
