"""The admin API against clipper_admin 0.4.1's signatures, position by position.

A Clipper user's positional call must mean the same here: ``deploy_model(name, version,
input_type, image, labels, num_replicas)`` took the labels as the replica count. The
table is each function's positional parameters as clipper_admin declares them (read
from its source; clipper_admin is not a dependency, so the table is copied here). Ours
may stop earlier (the rest keyword-only or absent: a TypeError, which is loud), but each
positional we take is Clipper's at that place. Functions we leave out are listed so a
new one gets checked when it is added.
"""

import inspect

import pytest

from systems import miniclipper as mc
from systems.miniclipper import deployers

CLIPPER_POSITIONAL = {
    'ClipperConnection.__init__': ['container_manager'],
    'ClipperConnection.start_clipper': ['query_frontend_image', 'mgmt_frontend_image',
                                        'frontend_exporter_image', 'cache_size',
                                        'qf_http_thread_pool_size', 'qf_http_timeout_request',
                                        'qf_http_timeout_content', 'num_frontend_replicas'],
    'ClipperConnection.connect': [],
    'ClipperConnection.register_application': ['name', 'input_type', 'default_output',
                                               'slo_micros'],
    'ClipperConnection.delete_application': ['name'],
    'ClipperConnection.unregister_application': ['name'],
    'ClipperConnection.link_model_to_app': ['app_name', 'model_name'],
    'ClipperConnection.unlink_model_from_app': ['app_name', 'model_name'],
    'ClipperConnection.build_and_deploy_model': ['name', 'version', 'input_type', 'model_data_path',
                                                 'base_image', 'labels', 'container_registry',
                                                 'num_replicas', 'batch_size', 'pkgs_to_install'],
    'ClipperConnection.build_model': ['name', 'version', 'model_data_path', 'base_image',
                                      'container_registry', 'pkgs_to_install'],
    'ClipperConnection.deploy_model': ['name', 'version', 'input_type', 'image', 'labels',
                                       'num_replicas', 'batch_size'],
    'ClipperConnection.register_model': ['name', 'version', 'input_type', 'image', 'labels',
                                         'batch_size'],
    'ClipperConnection.get_current_model_version': ['name'],
    'ClipperConnection.get_num_replicas': ['name', 'version'],
    'ClipperConnection.set_num_replicas': ['name', 'num_replicas', 'version'],
    'ClipperConnection.get_all_apps': ['verbose'],
    'ClipperConnection.get_app_info': ['name'],
    'ClipperConnection.get_linked_models': ['app_name'],
    'ClipperConnection.get_all_models': ['verbose'],
    'ClipperConnection.get_model_info': ['name', 'version'],
    'ClipperConnection.get_all_model_replicas': ['verbose'],
    'ClipperConnection.get_model_replica_info': ['name', 'version', 'replica_id'],
    'ClipperConnection.get_clipper_logs': ['logging_dir'],
    'ClipperConnection.inspect_instance': [],
    'ClipperConnection.set_model_version': ['name', 'version', 'num_replicas'],
    'ClipperConnection.get_query_addr': [],
    'ClipperConnection.get_metric_addr': [],
    'ClipperConnection.stop_models': ['model_names'],
    'ClipperConnection.stop_versioned_models': ['model_versions_dict'],
    'ClipperConnection.stop_inactive_model_versions': ['model_names'],
    'ClipperConnection.stop_all_model_containers': [],
    'ClipperConnection.stop_all': ['graceful'],
    'ClipperConnection.test_predict_function': ['query', 'func', 'input_type'],
    'python.create_endpoint': ['clipper_conn', 'name', 'input_type', 'func', 'default_output',
                               'version', 'slo_micros', 'labels', 'registry', 'base_image',
                               'num_replicas', 'batch_size', 'pkgs_to_install'],
    'python.deploy_python_closure': ['clipper_conn', 'name', 'version', 'input_type', 'func',
                                     'base_image', 'labels', 'registry', 'num_replicas',
                                     'batch_size', 'pkgs_to_install'],
    'pytorch.create_endpoint': ['clipper_conn', 'name', 'input_type', 'func', 'pytorch_model',
                                'default_output', 'version', 'slo_micros', 'labels', 'registry',
                                'base_image', 'num_replicas', 'batch_size', 'pkgs_to_install'],
    'pytorch.deploy_pytorch_model': ['clipper_conn', 'name', 'version', 'input_type', 'func',
                                     'pytorch_model', 'base_image', 'labels', 'registry',
                                     'num_replicas', 'batch_size', 'pkgs_to_install'],
}

# the same argument under another name; ``model_data_path`` is a model directory where
# Clipper takes a Docker image built from one
SAME = {("conn", "clipper_conn"), ("model_data_path", "image")}
# start_clipper takes the ports the issue names (Clipper gives them to its container
# manager and takes Docker images here); nothing else Clipper puts here applies
NOT_CLIPPERS = {"ClipperConnection.start_clipper"}
LEFT_OUT = {"ClipperConnection.delete_application", "ClipperConnection.build_and_deploy_model",
            "ClipperConnection.build_model", "ClipperConnection.register_model",
            "ClipperConnection.get_model_replica_info", "ClipperConnection.get_clipper_logs",
            "ClipperConnection.inspect_instance", "ClipperConnection.get_metric_addr",
            "ClipperConnection.test_predict_function", "pytorch.create_endpoint"}


def _ours(key):
    owner, name = key.split(".")
    if owner == "ClipperConnection":
        return getattr(mc.ClipperConnection, name, None)
    if owner == "pytorch" and name == "create_endpoint":
        return None  # ours (one module) has the python deployer's create_endpoint only
    return getattr(deployers, name, None)


@pytest.mark.parametrize("key", sorted(set(CLIPPER_POSITIONAL) - NOT_CLIPPERS))
def test_each_positional_argument_is_clippers_at_that_position(key):
    fn = _ours(key)
    if key in LEFT_OUT:
        assert fn is None, f"{key} exists now: take it out of LEFT_OUT"
        return
    theirs = CLIPPER_POSITIONAL[key]
    params = inspect.signature(fn).parameters.values()
    ours = [p.name for p in params if p.name != "self"
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(ours) <= len(theirs), (ours, theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if key == "pytorch.deploy_pytorch_model" and i in (4, 5):
            continue  # (module, input_shape), or Clipper's (func, pytorch_model): both taken
        assert a == b or (a, b) in SAME, f"{key}: position {i} is {a!r} here, {b!r} in Clipper"
