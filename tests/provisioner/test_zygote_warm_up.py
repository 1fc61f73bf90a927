"""What the Synapse zygote does once for every homeserver's start (zygote_server._warm_up)
gives each homeserver what it would have computed itself: a schema that fails still fails,
every time; a template whose source changed is compiled again, never served stale; an IP set
built once is the same set, each caller's own, and a bad address fails every time. And each
forked homeserver's collector checks run once a second, not ten times (space_gc_checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import jsonschema
import pytest
from jsonschema import validators

from provisioner.backends.zygote_server import (
    _checked_once,
    _ip_sets_built_once,
    _with_bytecode_cache,
)


def test_a_schema_is_checked_once_and_a_bad_one_fails_every_time() -> None:
    checks: list[object] = []

    def check(schema: object) -> None:
        checks.append(schema)
        validators.Draft202012Validator.check_schema(schema)

    checked = _checked_once(check)
    good = {"type": "object", "properties": {"issuer": {"type": "string"}}}
    checked(good)
    checked({"properties": {"issuer": {"type": "string"}}, "type": "object"})  # equal
    assert len(checks) == 1
    checked({**good, "required": ["issuer"]})  # another schema: checked
    assert len(checks) == 2
    for _ in range(2):
        with pytest.raises(jsonschema.SchemaError):
            checked({"type": 12})
    assert len(checks) == 4


def test_templates_compile_once_across_environments_and_again_when_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = _with_bytecode_cache(jinja2)
    assert shared is not jinja2 and shared.Template is jinja2.Template
    (tmp_path / "page.html").write_text("<p>{{ name }}</p>")
    compiled: list[str] = []
    compile_ = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: str, *args: object, **kwargs: object) -> object:
        compiled.append(source)
        return compile_(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)

    def render(name: str) -> str:
        env = shared.Environment(loader=jinja2.FileSystemLoader(tmp_path), autoescape=True)
        return env.get_template("page.html").render(name=name)

    assert render("<alpha>") == "<p>&lt;alpha&gt;</p>"
    assert render("beta") == "<p>beta</p>"  # a second environment, as each start makes
    assert len(compiled) == 1
    (tmp_path / "page.html").write_text("<b>{{ name }}</b>")
    assert render("gamma") == "<b>gamma</b>"
    assert len(compiled) == 2


def test_ip_sets_are_built_once_and_each_caller_gets_its_own() -> None:
    from netaddr import IPAddress
    from synapse.config._base import ConfigError
    from synapse.config.server import generate_ip_set

    built: list[object] = []

    def generate(*args: object) -> object:
        built.append(args)
        return generate_ip_set(*args)  # type: ignore[arg-type]

    shared = _ip_sets_built_once(generate)
    blocked = ["10.0.0.0/8", "192.168.0.0/16"]
    first = shared(blocked, ["127.0.0.0/8"], ("ip_range_blocklist",))
    assert first == generate_ip_set(blocked, ["127.0.0.0/8"])  # the same networks
    assert IPAddress("::ffff:10.1.2.3") in first  # with their IPv6 forms
    first.add("8.8.8.8/32")  # a caller changing its own set
    second = shared(iter(blocked), ["127.0.0.0/8"], ("federation_ip_range_blocklist",))
    assert IPAddress("8.8.8.8") not in second
    assert len(built) == 1
    for _ in range(2):
        with pytest.raises(ConfigError):
            shared(["not-a-network"], None, ("ip_range_blocklist",))
    assert len(built) == 3


_GC_TIMER = """
import gc, json, sys
from synapse.app import _base
from twisted.internet import reactor, task

from provisioner.backends.zygote_server import space_gc_checks

period = float(sys.argv[1])
looping = task.LoopingCall
if period:
    space_gc_checks(period)
_base.install_gc_manager()  # what a forked homeserver's start runs (synapse.app._base.start)
now = reactor.seconds()
timers = [
    (call.func.f.__name__, round(call.getTime() - now, 2))
    for call in reactor.getDelayedCalls()
    if isinstance(call.func, task.LoopingCall)
]
print(json.dumps({"gc": gc.isenabled(), "restored": task.LoopingCall is looping, "timers": timers}))
"""


@pytest.mark.parametrize(
    ("period", "checks_every"),
    [
        (0.0, 0.1),  # Synapse's own timer: ten wake-ups a second in every idle homeserver
        (1.0, 1.0),  # C3_SYNAPSE_GC_CHECK_S's default
        (0.05, 0.1),  # never more often than Synapse's own
    ],
)
def test_forked_homeservers_check_for_a_due_collection_at_the_configured_period(
    period: float, checks_every: float
) -> None:
    """Synapse's real ``install_gc_manager``, as a homeserver forked from the zygote runs it:
    Python's collector off, Synapse's check on a timer of ``checks_every`` seconds, nothing
    else of Twisted changed."""
    ran = subprocess.run(
        [sys.executable, "-c", _GC_TIMER, str(period)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    told = json.loads(ran.stdout.strip().splitlines()[-1])
    assert told == {"gc": False, "restored": True, "timers": [["_maybe_gc", checks_every]]}
