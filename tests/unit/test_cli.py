"""The `junction` command's offline forms: validate, render, bootstrap; exit codes and stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from junction.cli import main

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed.yaml"
INSTANCES = ROOT / "examples" / "instances.yaml"


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(SEED)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_reports_every_problem_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SEED.read_text()
        .replace("weight: 10}", "weight: 101}")
        .replace("lb-policy: random", "lb-policy: fastest")
    )
    assert main(["validate", "-c", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"{bad}: line 11: route.cluster.web-api-go.weight: must be an integer 0..100" in err
    assert any("cluster.loadbalancer.web-asset.lb-policy: must be one of" in e for e in err)


def test_validate_unreadable_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", "/nonexistent/config.yaml"]) == 1
    assert "/nonexistent/config.yaml: <document>: cannot read" in capsys.readouterr().err


def test_render_prints_the_four_resource_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-c", str(SEED), "--instances", str(INSTANCES)]) == 0
    out = json.loads(capsys.readouterr().out)
    # The four resource lists, and who decides per route (junction.extproc.tiers).
    assert set(out) == {"listeners", "routes", "clusters", "endpoints", "decisions"}
    assert [(d["prefix"], d["tier"]) for d in out["decisions"]] == [
        ("/asset", "off"),
        ("/api", "native"),
    ]
    assert [c["name"] for c in out["clusters"]] == ["web-api-go", "web-api-perl", "web-asset"]
    assert out["listeners"][0]["address"]["socketAddress"]["portValue"] == 8000
    perl = next(e for e in out["endpoints"] if e["clusterName"] == "web-api-perl")
    assert len(perl["endpoints"]) == 2  # two zones


def test_render_bad_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "instances.yaml"
    bad.write_text("services: {web-api-go: [{address: 127.0.0.1, port: 99999}]}\n")
    assert main(["render", "-c", str(SEED), "--instances", str(bad)]) == 1
    assert "services.web-api-go[0].port: must be an integer 1..65535" in capsys.readouterr().err


def test_bootstrap_prints_a_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bootstrap", "--node-id", "edge-1", "--zone", "z1", "--xds-port", "19000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["node"]["id"] == "edge-1"
    assert doc["node"]["locality"]["zone"] == "z1"
    names = {c["name"] for c in doc["staticResources"]["clusters"]}
    assert {"junction_xds", "junction_als", "junction_extproc"} <= names


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["bootstrap", "--xds-port", "70000"], "70000 is not a port number"),
        (["up", "--http-port", "x"], "'x' is not a port number"),
        (["render", "-c", "x.yaml"], "--instances"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_up_without_sources_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "-c", str(SEED)]) == 1
    assert "give --instances FILE or --consul-addr" in capsys.readouterr().err
    assert main(["serve", "--consul-key", "k", "--instances", str(INSTANCES)]) == 1
    assert "--consul-key needs --consul-addr" in capsys.readouterr().err
