"""What the Synapse zygote does once for every homeserver's start (zygote_server._warm_up)
gives each homeserver what it would have computed itself: a schema that fails still fails,
every time; a template whose source changed is compiled again, never served stale."""

from __future__ import annotations

from pathlib import Path

import jinja2
import jsonschema
import pytest
from jsonschema import validators

from provisioner.backends.zygote_server import _checked_once, _with_bytecode_cache


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
