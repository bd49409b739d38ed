"""miniflow's public functions against TF1's signatures, position by position.

A positional argument that means something else in TF1 silently changes what a TF1
program computes (``gather(p, i, 1)`` picked columns; ``zeros_like(x, tf.int32)`` named
the op ``int32``). The table is each function's positional parameters as
``tf.compat.v1`` declares them (read with ``inspect.signature`` from TensorFlow 2.x's
``tf.compat.v1``, ``.nn`` and ``.train``; TensorFlow is not a dependency, so the table is
copied here). Ours may stop earlier (the rest is keyword-only or left out: a TypeError,
which is loud), but each positional we take must be TF's at that position.
"""

import inspect

import pytest

import systems.miniflow as mf

TF1_POSITIONAL = {
    # constructors
    'Session': ['target', 'graph', 'config'],
    'Variable': ['initial_value', 'trainable', 'collections', 'validate_shape', 'caching_device',
                 'name', 'variable_def', 'dtype', 'expected_shape', 'import_scope', 'constraint',
                 'use_resource', 'synchronization', 'aggregation', 'shape'],
    'RegisterGradient': ['op_type'],
    'train.AdamOptimizer': ['learning_rate', 'beta1', 'beta2', 'epsilon', 'use_locking', 'name',
                            'use_own_namescope_for_non_slot_vars'],
    'train.AdagradOptimizer': ['learning_rate', 'initial_accumulator_value', 'use_locking',
                               'name'],
    'train.exponential_decay': ['learning_rate', 'global_step', 'decay_steps', 'decay_rate',
                                'staircase', 'name'],
    'train.GradientDescentOptimizer': ['learning_rate', 'use_locking', 'name'],
    'train.RMSPropOptimizer': ['learning_rate', 'decay', 'momentum', 'epsilon', 'use_locking',
                               'centered', 'name'],
    'train.MomentumOptimizer': ['learning_rate', 'momentum', 'use_locking', 'name', 'use_nesterov'],
    'train.Saver': ['var_list', 'reshape', 'sharded', 'max_to_keep',
                    'keep_checkpoint_every_n_hours', 'name', 'restore_sequentially', 'saver_def',
                    'builder', 'defer_build', 'allow_empty', 'write_version', 'pad_step_number',
                    'save_relative_paths', 'filename'],
    # functions and methods
    'abs': ['x', 'name'],
    'add': ['x', 'y', 'name'],
    'add_n': ['inputs', 'name'],
    'argmax': ['input', 'axis', 'name', 'dimension', 'output_type'],
    'as_dtype': ['type_value'],
    'assign': ['ref', 'value', 'validate_shape', 'use_locking', 'name'],
    'assign_add': ['ref', 'value', 'use_locking', 'name'],
    'assign_sub': ['ref', 'value', 'use_locking', 'name'],
    'broadcast_to': ['input', 'shape', 'name'],
    'cast': ['x', 'dtype', 'name'],
    'check_numerics': ['tensor', 'message', 'name'],
    'concat': ['values', 'axis', 'name'],
    'constant': ['value', 'dtype', 'shape', 'name', 'verify_shape'],
    'control_dependencies': ['control_inputs'],
    'convert_to_tensor': ['value', 'dtype', 'name', 'preferred_dtype', 'dtype_hint'],
    'device': ['device_name_or_function'],
    'div': ['x', 'y', 'name'],
    'divide': ['x', 'y', 'name'],
    'equal': ['x', 'y', 'name'],
    'exp': ['x', 'name'],
    'floordiv': ['x', 'y', 'name'],
    'gather': ['params', 'indices', 'validate_indices', 'name', 'axis', 'batch_dims'],
    'global_variables': ['scope'],
    'gradients': ['ys', 'xs', 'grad_ys', 'name', 'colocate_gradients_with_ops', 'gate_gradients',
                  'aggregation_method', 'stop_gradients', 'unconnected_gradients'],
    'greater': ['x', 'y', 'name'],
    'greater_equal': ['x', 'y', 'name'],
    'identity': ['input', 'name'],
    'less': ['x', 'y', 'name'],
    'less_equal': ['x', 'y', 'name'],
    'log': ['x', 'name'],
    'logical_and': ['x', 'y', 'name'],
    'logical_not': ['x', 'name'],
    'logical_or': ['x', 'y', 'name'],
    'matmul': ['a', 'b', 'transpose_a', 'transpose_b', 'adjoint_a', 'adjoint_b', 'a_is_sparse',
               'b_is_sparse', 'output_type', 'grad_a', 'grad_b', 'name'],
    'maximum': ['x', 'y', 'name'],
    'minimum': ['x', 'y', 'name'],
    'multiply': ['x', 'y', 'name'],
    'name_scope': ['name', 'default_name', 'values'],
    'negative': ['x', 'name'],
    'no_gradient': ['op_type'],
    'no_op': ['name'],
    'not_equal': ['x', 'y', 'name'],
    'one_hot': ['indices', 'depth', 'on_value', 'off_value', 'axis', 'dtype', 'name'],
    'ones_like': ['tensor', 'dtype', 'name', 'optimize'],
    'placeholder': ['dtype', 'shape', 'name'],
    'pow': ['x', 'y', 'name'],
    'reduce_max': ['input_tensor', 'axis', 'keepdims', 'name', 'reduction_indices', 'keep_dims'],
    'reduce_mean': ['input_tensor', 'axis', 'keepdims', 'name', 'reduction_indices', 'keep_dims'],
    'reduce_sum': ['input_tensor', 'axis', 'keepdims', 'name', 'reduction_indices', 'keep_dims'],
    'reshape': ['tensor', 'shape', 'name'],
    'shape': ['input', 'name', 'out_type'],
    'sigmoid': ['x', 'name'],
    'sign': ['x', 'name'],
    'size': ['input', 'name', 'out_type'],
    'sqrt': ['x', 'name'],
    'square': ['x', 'name'],
    'stop_gradient': ['input', 'name'],
    'strided_slice': ['input_', 'begin', 'end', 'strides', 'begin_mask', 'end_mask',
                      'ellipsis_mask', 'new_axis_mask', 'shrink_axis_mask', 'var', 'name'],
    'subtract': ['x', 'y', 'name'],
    'tanh': ['x', 'name'],
    'trainable_variables': ['scope'],
    'transpose': ['a', 'perm', 'name', 'conjugate'],
    'truediv': ['x', 'y', 'name'],
    'variables_initializer': ['var_list', 'name'],
    'where': ['condition', 'x', 'y', 'name'],
    'where_v2': ['condition', 'x', 'y', 'name'],
    'zeros_like': ['tensor', 'dtype', 'name', 'optimize'],
    'nn.avg_pool': ['value', 'ksize', 'strides', 'padding', 'data_format', 'name', 'input'],
    'nn.avg_pool2d': ['value', 'ksize', 'strides', 'padding', 'data_format', 'name', 'input'],
    'nn.bias_add': ['value', 'bias', 'data_format', 'name'],
    'nn.conv2d': ['input', 'filter', 'strides', 'padding', 'use_cudnn_on_gpu', 'data_format',
                  'dilations', 'name', 'filters'],
    'nn.dropout': ['x', 'keep_prob', 'noise_shape', 'seed', 'name', 'rate'],
    'nn.embedding_lookup': ['params', 'ids', 'partition_strategy', 'name', 'validate_indices',
                            'max_norm'],
    'nn.l2_loss': ['t', 'name'],
    'nn.softmax_cross_entropy_with_logits': ['labels', 'logits', 'dim', 'name', 'axis'],
    'nn.softmax_cross_entropy_with_logits_v2': ['labels', 'logits', 'axis', 'name', 'dim'],
    'nn.log_softmax': ['logits', 'axis', 'name', 'dim'],
    'nn.max_pool': ['value', 'ksize', 'strides', 'padding', 'data_format', 'name', 'input'],
    'nn.max_pool2d': ['input', 'ksize', 'strides', 'padding', 'data_format', 'name'],
    'nn.relu': ['features', 'name'],
    'nn.sigmoid': ['x', 'name'],
    'nn.softmax': ['logits', 'axis', 'name', 'dim'],
    'nn.sparse_softmax_cross_entropy_with_logits': ['labels', 'logits', 'name'],
    'nn.tanh': ['x', 'name'],
    'train.latest_checkpoint': ['checkpoint_dir', 'latest_filename'],
    'Variable.assign': ['value', 'use_locking', 'name', 'read_value'],
    'Variable.assign_add': ['delta', 'use_locking', 'name', 'read_value'],
    'Variable.assign_sub': ['delta', 'use_locking', 'name', 'read_value'],
    'Variable.eval': ['session'],
    'Variable.load': ['value', 'session'],
    'Session.run': ['fetches', 'feed_dict', 'options', 'run_metadata'],
    'train.Optimizer.minimize': ['loss', 'global_step', 'var_list', 'gate_gradients',
                                 'aggregation_method', 'colocate_gradients_with_ops', 'name',
                                 'grad_loss'],
    'add_to_collection': ['name', 'value'],
    'expand_dims': ['input', 'axis', 'name', 'dim'],
    'squeeze': ['input', 'axis', 'name', 'squeeze_dims'],
    'stack': ['values', 'axis', 'name'],
    'unstack': ['value', 'num', 'axis', 'name'],
    'get_collection': ['key', 'scope'],
    'train.get_global_step': ['graph'],
    'train.get_or_create_global_step': ['graph'],
    'train.global_step': ['sess', 'global_step_tensor'],
    'clip_by_global_norm': ['t_list', 'clip_norm', 'use_norm', 'name'],
    'clip_by_norm': ['t', 'clip_norm', 'axes', 'name'],
    'clip_by_value': ['t', 'clip_value_min', 'clip_value_max', 'name'],
    'ones': ['shape', 'dtype', 'name', 'layout'],
    'zeros': ['shape', 'dtype', 'name', 'layout'],
    'InteractiveSession': ['target', 'graph', 'config'],
    'random_normal': ['shape', 'mean', 'stddev', 'dtype', 'seed', 'name'],
    'reduce_min': ['input_tensor', 'axis', 'keepdims', 'name', 'reduction_indices',
                   'keep_dims'],
    'random_uniform': ['shape', 'minval', 'maxval', 'dtype', 'seed', 'name'],
    'set_random_seed': ['seed'],
    'truncated_normal': ['shape', 'mean', 'stddev', 'dtype', 'seed', 'name'],
    'train.Optimizer.compute_gradients': ['loss', 'var_list', 'gate_gradients',
                                          'aggregation_method', 'colocate_gradients_with_ops',
                                          'grad_loss'],
    'train.Optimizer.apply_gradients': ['grads_and_vars', 'global_step', 'name',
                                        'skip_gradients_aggregation'],
    'train.Saver.save': ['sess', 'save_path', 'global_step', 'latest_filename', 'meta_graph_suffix',
                         'write_meta_graph', 'write_state', 'strip_default_attrs',
                         'save_debug_info'],
    'train.Saver.restore': ['sess', 'save_path'],
}

# the same argument under another name (a keyword call fails loudly, a positional one
# means the same)
SAME = {("x", "input"), ("x", "tensor"), ("x", "input_tensor"), ("x", "a"),
        ("x", "features"), ("x", "type_value"), ("shape_tensor", "shape"),
        ("ops", "control_inputs"), ("spec", "device_name_or_function"),
        ("input", "value"), ("filters", "filter")}


def _resolve(key):
    obj = mf
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("key", sorted(TF1_POSITIONAL))
def test_each_positional_argument_is_tf1s_at_that_position(key):
    theirs = TF1_POSITIONAL[key]
    params = inspect.signature(_resolve(key)).parameters.values()
    ours = [p.name for p in params if p.name != "self"
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(ours) <= len(theirs), (ours, theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        assert a == b or (a, b) in SAME, f"{key}: position {i} is {a!r} here, {b!r} in TF1"
