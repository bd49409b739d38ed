"""The management REST API (systems/miniclipper/management.py and
management_checks.py) spoken directly: what it refuses and why, its answers to edge
cases, and its container controls."""

import asyncio
import json
import os
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from systems.miniclipper import ClipperException, deploy_python_closure
from systems.miniclipper.deployers import save_python_closure
from systems.miniclipper.frontend import ClipperServer
from systems.miniclipper.management import management_app

from .conftest import post, scrape, versioned


def test_the_management_api_refuses_bytes_and_bad_requests(clipper, tmp_path):
    mgmt = f"http://{clipper.cm.get_admin_addr()}/admin"
    good = save_python_closure(versioned(3))
    model = {"model_name": "m", "model_version": "1", "input_type": "doubles",
             "model_data_path": good}
    cases = [
        ({**model, "model_bytes": "gASVAAAA"}, "unexpected field(s) ['model_bytes']"),
        ({**model, "model_data_path": str(tmp_path)}, "is not a model directory"),
        ({**model, "model_data_path": "relative/dir"}, "must be an absolute path"),
        ({**model, "model_name": "../etc"}, "must be a DNS-1123 label"),
        ({**model, "num_replicas": "2"}, "should be int"),
        ({**model, "batching": {"policy": "lifo"}}, "policy must be one of"),
        # clipper_admin's batch_size: -1 (adaptive) or a static size; it used to say
        # "must be in 1..max_size=1", a max_size nobody gave
        ({**model, "batch_size": 0}, "batch_size must be -1 (adaptive) or a static size"),
        ({**model, "labels": ["ok", 1]}, "labels must be a list of strings"),
        # an OSError of the path is the caller's too (it was a 500)
        ({**model, "model_data_path": "/" + "a" * 5000}, "File name too long"),
    ]
    # a link in a model directory was followed out of it (to /dev/zero: read for ever
    # under the management lock, the disk filling)
    linked = tmp_path / "linked"
    save_python_closure(versioned(1), linked)
    (linked / "vocab.txt").symlink_to("/etc/hostname")
    cases.append(({**model, "model_data_path": str(linked)}, "is a symbolic link"))
    for doc, cause in cases:
        code, r = post(f"{mgmt}/add_model", doc)
        assert code == 400 and cause in r["cause"], (doc, r)
    broken = tmp_path / "broken"
    save_python_closure(versioned(1), broken)
    (broken / "model.pkl").write_bytes(b"not a pickle")
    code, r = post(f"{mgmt}/add_model", {**model, "model_data_path": str(broken)})
    assert code == 400 and "failed to start" in r["cause"] and "m:1" not in \
        clipper.get_all_models()
    assert not [k for k in scrape(clipper) if ("model", "m:1") in k[1]]  # no series either
    assert post(f"{mgmt}/add_model", model)[0] == 200
    code, r = post(f"{mgmt}/add_model", model)
    assert code == 400 and "already deployed" in r["cause"]
    code, r = post(f"{mgmt}/add_model_links", {"app_name": "nope", "model_names": ["m"]})
    assert code == 404 and "no application named 'nope'" in r["cause"]
    code, r = post(f"{mgmt}/add_app", {"name": "x", "input_type": "pickles",
                                        "default_output": 0, "latency_slo_micros": 10})
    assert code == 400 and "input_type must be one of" in r["cause"]
    with pytest.raises(ClipperException, match="404"):
        clipper.set_model_version("m", 9)
    for endpoint, doc, want in [  # the stop and unlink endpoints check as strictly
        ("delete_versioned_model", {"model_name": "m", "model_version": "1", "pickle": 1},
         (400, "unexpected field(s) ['pickle']")),
        ("delete_versioned_model", {"model_name": "m", "model_version": "9"},
         (404, "no model m:9")),
        ("delete_model_links", {"app_name": "nope", "model_names": ["m"]},
         (404, "no application named 'nope'")),
        ("get_linked_models", {"app_name": ["nope"]}, (400, "should be str")),
        # over REST an unknown name is a 404 with the reason (the admin calls turn it
        # into clipper_admin's None: test_admin.py)
        ("get_application", {"name": "nope"}, (404, "no application named 'nope'")),
        ("get_model", {"model_name": "m", "model_version": "9"}, (404, "no model m:9")),
        ("add_app", {"name": "s", "input_type": "strings", "default_output": "",
                     "latency_slo_micros": 10, "input_length": 3},
         (400, "an application of strings takes any length")),
    ]:
        code, r = post(f"{mgmt}/{endpoint}", doc)
        assert code == want[0] and want[1] in r["cause"], (endpoint, r)
    assert "m:1" in clipper.get_all_models()  # none of those stopped it


def test_management_edge_cases_answer_json_and_keep_state(clipper):
    """Version 0 is a version; a link across input types is refused (Clipper checks
    that a model and its app agree); a replica that cannot start is a JSON 500; a
    browser's cross-site or non-JSON POST is refused before it does anything."""
    c = clipper
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    c.register_application("zero", "doubles", -1.0, 1_000_000)
    for v in (0, 1):
        deploy_python_closure(c, "zero", v, "doubles", versioned(v))
    c.link_model_to_app("zero", "zero")
    code, r = post(f"{mgmt}/set_model_version", {"model_name": "zero", "model_version": 0})
    assert code == 200 and r["model"] == "zero:0" and c.predict("zero", [0.0])["output"] == 0.0
    deploy_python_closure(c, "words", 1, "strings", lambda xs: [len(x) for x in xs])
    with pytest.raises(ClipperException, match="words.*takes input_type.*strings.*sends.*doubles"):
        c.link_model_to_app("zero", "words")
    with pytest.raises(ClipperException, match="linked to application 'zero'"):
        deploy_python_closure(c, "zero", 2, "strings", lambda xs: list(xs))
    assert c.get_app_info("zero")["linked_models"] == ["zero"]
    store = c.get_model_info("zero", 1)["path"]
    os.remove(os.path.join(store, "model.pkl"))  # a new replica can no longer load it
    code, r = post(f"{mgmt}/set_num_replicas", {"model_name": "zero", "model_version": "1",
                                                 "num_replicas": 2})
    assert code == 500 and set(r) == {"error", "cause"} and "failed to start" in r["cause"]
    assert c.predict("zero", [0.0])["output"] == 0.0  # the current version still serves
    import urllib.error
    import urllib.request
    for headers in ({"Content-Type": "text/plain"},
                    {"Content-Type": "application/json", "Origin": "http://evil.example"}):
        req = urllib.request.Request(f"{mgmt}/add_app", headers=headers, data=json.dumps(
            {"name": "evil", "input_type": "doubles", "default_output": 0,
             "latency_slo_micros": 10}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code in (403, 415) and "cause" in json.loads(e.value.read())
    assert "evil" not in c.get_all_apps()


def test_the_containers_listing_is_strict_json_before_a_controller_has_a_fit(clipper):
    """The quantile controller's line is NaN until its first fit (which a replica seeing
    only batches of one never makes), and the listing answered a bare NaN: JavaScript,
    jq or Go refuse the whole answer. post() parses strictly."""
    c = clipper
    deploy_python_closure(c, "q", 1, "doubles", lambda xs: [1.0] * len(xs),
                          batching={"policy": "quantile"})
    code, rows = post(f"http://{c.cm.get_admin_addr()}/admin/get_all_containers", {})
    row = next(r for r in rows if r["model"] == "q:1")
    assert code == 200 and row["controller"] == "quantile" and row["alpha_s"] == "NaN"


def test_a_model_deployed_with_0_replicas_answers_the_default_until_it_is_scaled_up(clipper):
    """add_model with num_replicas 0 starts no container: a query to an app linked to
    it is answered at once with the default output and why (not after its SLO, as an
    SLO miss); after set_num_replicas(1) the same query gets the model's output."""
    c = clipper
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    code, r = post(f"{mgmt}/add_model", {
        "model_name": "zero-rep", "model_version": "1", "input_type": "doubles",
        "model_data_path": save_python_closure(versioned(7)), "num_replicas": 0})
    assert code == 200 and r == {"ok": True, "model": "zero-rep:1", "replicas": 0}
    c.register_application("zero-rep", "doubles", -1.0, 2_000_000)
    c.link_model_to_app("zero-rep", "zero-rep")
    t0 = time.monotonic()
    out = c.predict("zero-rep", [1.0])
    assert time.monotonic() - t0 < 1.0, out  # not the 2 s SLO
    assert out["default"] and out["output"] == -1.0
    assert out["default_explanation"] == \
        "model zero-rep:1 runs 0 replicas (set_num_replicas); none serves it"
    c.set_num_replicas("zero-rep", 1)
    out = c.predict("zero-rep", [1.0])  # the same input: the default was not cached
    assert not out["default"] and out["output"] == 7.0, out


def test_each_bad_management_request_is_refused_naming_what_is_wrong(clipper):
    """One table of refusals, each with its status and a cause naming the field; none
    of them changes what is deployed."""
    c = clipper
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    c.register_application("val", "doubles", -1.0, 1_000_000)
    model = {"model_name": "val", "model_version": "1", "input_type": "doubles",
             "model_data_path": save_python_closure(versioned(1))}
    assert post(f"{mgmt}/add_model", {**model, "num_replicas": 0})[0] == 200  # no container
    batching = c.get_model_info("val", 1)["batching"]
    y = {**model, "model_name": "y", "model_data_path": "/nonexistent"}
    app = {"name": "val2", "input_type": "doubles", "latency_slo_micros": 1000,
           "default_output": 0}
    bad, json_error = ("Bad request", 400), ("Json error", 400)
    for endpoint, body, (error, status), cause in (
            ("add_app", {**app, "name": "val"}, bad, "application 'val' already exists"),
            ("add_app", {**app, "selection_policy": "nope"}, bad,
             "selection_policy must be one of ["),
            ("add_app", [1, 2], bad, "add_app takes a JSON object, got list"),
            ("add_app", {"name": "val2"}, bad, "add_app: missing field 'input_type'"),
            # (checked before the path is read or the version looked up: with the check
            # gone these would be another refusal, not 99 containers)
            ("add_model", {**y, "input_type": "nope"}, bad, "input_type must be one of ["),
            ("add_model", {**y, "num_replicas": 99}, bad,
             "num_replicas must be 0..64 and max_queue 1..2^20"),
            ("add_model", {**y, "max_queue": 0}, bad,
             "num_replicas must be 0..64 and max_queue 1..2^20"),
            ("set_num_replicas", {"model_name": "val", "model_version": 9, "num_replicas": 99},
             bad, "num_replicas must be 0..64"),
            ("set_num_replicas", {"model_name": "val", "model_version": 9, "num_replicas": -1},
             bad, "num_replicas must be 0..64"),
            ("add_model_links", {"app_name": "val", "model_names": ["val", "nope"]}, bad,
             "no deployed model named ['nope']; deployed: "),
            ("set_batching", {"model_name": "val", "batching": {"size": 0}}, bad,
             "batch size 0 must be in 1..max_size=512"),
            ("set_batching", {"model_name": "val", "batching": {"max_delay_s": 20}}, bad,
             "batching max_delay_s must be a number in [0, 10) s, got 20"),
            ("set_batching", {"model_name": "val", "batching": {"colour": 1}}, bad,
             "unknown batching fields ['colour']"),
            # (was a bare TypeError from the comparison, naming no field)
            ("set_batching", {"model_name": "val", "batching": {"max_delay_s": "x"}}, bad,
             "batching max_delay_s must be a number in [0, 10) s, got 'x'"),
            ("set_batching", {"model_name": "val", "model_version": 2,
                              "batching": {"policy": "aimd"}}, ("Not found", 404),
             "no model val:2; deployed: "),
            ("add_app", b"{bad", json_error,
             "/admin/add_app: body is not JSON: Expecting property name enclosed in double "
             "quotes"),
            ("add_app", b'{"name": "\xff"}', json_error,
             "/admin/add_app: body is not JSON: 'utf-8' codec can't decode byte 0xff")):
        code, r = post(f"{mgmt}/{endpoint}", **{"raw" if isinstance(body, bytes) else "doc":
                                                body})
        assert (code, r.get("error")) == (status, error) and r["cause"].startswith(cause), \
            (endpoint, body, r)
    apps = c.get_all_apps()
    assert "val" in apps and "val2" not in apps
    assert c.get_app_info("val")["linked_models"] == []
    assert "y:1" not in c.get_all_models()
    info = c.get_model_info("val", 1)
    assert info["batching"] == batching and info["replicas"] == 0


def test_management_refuses_a_rebound_host_and_values_it_cannot_serve(clipper):
    """DNS rebinding: a page whose domain now resolves to 127.0.0.1 sends matching
    Origin and Host, so only the Host's *name* gives it away. Values that parse but
    cannot be served (an SLO of 10**400 us, a default of 1e999, model names that are
    not strings) are 400s at the door, not 500s on every later query."""
    import urllib.error
    import urllib.request

    c = clipper
    addr = c.cm.get_admin_addr()
    port = addr.rsplit(":", 1)[1]

    def call(endpoint, doc, host):
        req = urllib.request.Request(
            f"http://{addr}/admin/{endpoint}", data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json", "Host": host,
                     "Origin": f"http://{host}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    c.register_application("kept", "doubles", -1.0, 100_000)
    code, r = call("delete_app", {"name": "kept"}, f"attacker.example:{port}")
    assert code == 403 and "re-bound" in r["cause"] and "kept" in c.get_all_apps()
    code, _ = call("get_all_applications", {}, f"localhost:{port}")
    assert code == 200
    for path in ("trace", "ping"):  # the GET routes read the trace out, as POSTs do state
        req = urllib.request.Request(f"http://{addr}/admin/{path}", headers={
            "Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403 and "re-bound" in json.loads(e.value.read())["cause"]
    mgmt = f"http://{addr}/admin"
    app = {"name": "huge", "input_type": "doubles", "default_output": 0,
           "latency_slo_micros": 10**400}
    code, r = post(f"{mgmt}/add_app", app)
    assert code == 400 and "latency_slo_micros must be in" in r["cause"]
    code, r = post(f"{mgmt}/add_app", raw=json.dumps({**app, "latency_slo_micros": 1000})
                   .replace('"default_output": 0', '"default_output": 1e999').encode())
    assert code == 400 and "overflows a float" in r["cause"]
    code, r = post(f"{mgmt}/add_model_links", {"app_name": "kept", "model_names": [["m"]]})
    assert code == 400 and "list of strings" in r["cause"]
    code, r = post(f"{mgmt}/add_model_links", {"app_name": "kept", "model_names": []})
    assert code == 400 and "model_names is empty" in r["cause"]  # as Clipper
    code, r = post(f"{mgmt}/get_batch_log", {"model_name": "nope", "since": 0})
    assert code == 404  # a whole-number 'since' is a time too: the model is what is missing
    code, r = post(f"{mgmt}/add_app", {**app, "latency_slo_micros": 1000,
                                       "input_length": 10**30})
    assert code == 400 and "input_length must be in" in r["cause"]
    code, r = post(f"{mgmt}/add_app", {**app, "name": "a" * 64, "latency_slo_micros": 1000})
    assert code == 400 and "at most 63" in r["cause"]
    code, r = post(f"{mgmt}/container_control", {"model_name": "nope", "slowdown": 1e300})
    assert code == 400 and "1..1000" in r["cause"]  # it made every later query a default
    code, r = post(f"{mgmt}/shutdown", {"bogus": 1})
    assert code == 400 and "unexpected field" in r["cause"]
    assert "huge" not in c.get_all_apps() and c.get_all_apps()  # and it is still up


def _sleeps_40ms(xs):
    time.sleep(0.04)
    return [float(len(x)) for x in xs]


def _container_compute_s(c, path, pid):
    """Each batch's compute time on container ``pid`` by its own clock (t1 - t0), read
    from the Chrome trace (the fixture samples every query)."""
    events = json.loads(c.get_trace(path).read_text())["traceEvents"]
    return [e["dur"] / 1e6 for e in events if e.get("cat") == "container"
            and e["pid"] == pid]


def test_container_control_slows_every_replica_of_the_model(clipper, tmp_path):
    """``/admin/container_control`` reaches the model's containers: each answers with
    its new slowdown, and a batch then takes at least 2.5x its compute time (3x, less
    a margin) by the container's own clock."""
    c = clipper
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    c.register_application("slow", "doubles", -1.0, 30_000_000)
    deploy_python_closure(c, "slow", 1, "doubles", _sleeps_40ms)
    c.link_model_to_app("slow", "slow")
    (rep,) = [r for r in c.get_all_model_replicas() if r["model"] == "slow:1"]
    assert c.predict("slow", [1.0, 2.0])["output"] == 2.0
    assert c.predict("slow", [1.0, 2.0, 3.0])["output"] == 3.0  # distinct: no cache hit
    base = _container_compute_s(c, tmp_path / "a.json", rep["pid"])
    assert len(base) == 2 and min(base) >= 0.036
    code, r = post(f"{mgmt}/container_control", {"model_name": "slow", "slowdown": 3})
    assert code == 200 and [h["pid"] for h in r] == [rep["pid"]] and r[0]["slowdown"] == 3
    (h,) = [x["health"] for x in c.get_all_model_replicas(verbose=True)
            if x["model"] == "slow:1"]
    assert h["slowdown"] == 3
    assert c.predict("slow", [4.0])["output"] == 1.0
    slow = _container_compute_s(c, tmp_path / "b.json", rep["pid"])[len(base):]
    assert len(slow) == 1 and slow[0] >= 2.5 * min(base), (base, slow)
    code, r = post(f"{mgmt}/container_control", {"model_name": "nope", "slowdown": 2})
    assert code == 404 and "no model nope" in r["cause"]
    code, r = post(f"{mgmt}/container_control", {"model_name": "slow", "slowdown": "2"})
    assert code == 400 and "should be int or float" in r["cause"]


def test_only_an_unknown_app_or_model_is_a_404_and_a_bug_is_a_500_with_its_name(tmp_path):
    """Every KeyError used to answer 404, so a bug (a lookup that should never fail)
    read as "not found", its cause a bare key. The server here is the real one, in this
    process; the bug is simulated by a model record with no batch log behind it."""
    async def main():
        server = ClipperServer(str(tmp_path))
        server.models[("m", "1")] = {"model_name": "m", "model_version": "1"}
        out = []
        async with TestClient(TestServer(management_app(server))) as c:
            for body in ({"model_name": "m", "model_version": "1"},
                         {"model_name": "zz", "model_version": "1"}):
                r = await c.post("/admin/get_batch_log", json=body)
                out.append((r.status, (await r.json())["cause"]))
        return out
    (bug, bug_cause), (missing, missing_cause) = asyncio.run(main())
    assert bug == 500 and bug_cause == "/admin/get_batch_log: KeyError: ('m', '1')"
    assert missing == 404 and missing_cause == "no model zz:1; deployed: ['m:1']"
