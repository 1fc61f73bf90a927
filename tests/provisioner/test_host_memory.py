"""Whether the homeservers' machine hands freed memory back to its host (free page reporting),
read as Linux shows it: the ``page_reporting`` module's parameters and ``/proc/buddyinfo``."""

from __future__ import annotations

from pathlib import Path

from provisioner.host_memory import page_reporting

BUDDYINFO = (
    "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1"
    "      3 \n"
    "Node 0, zone   Normal  54716  45130  32448  20306  10246   5204   2160    991    441    194"
    "    176 \n"
)


def machine(tmp_path: Path, order: str | None, reported: str | None = None) -> tuple[Path, Path]:
    parameters = tmp_path / "parameters"
    parameters.mkdir()
    if order is not None:
        (parameters / "page_reporting_order").write_text(order + "\n")
    if reported is not None:
        (parameters / "reported_kib").write_text(reported + "\n")
    buddyinfo = tmp_path / "buddyinfo"
    buddyinfo.write_text(BUDDYINFO)
    return parameters, buddyinfo


def test_a_vm_that_reports_free_blocks_of_2_mib_hands_memory_back(tmp_path: Path) -> None:
    found = page_reporting(*machine(tmp_path, "9", "3153268"))
    assert found.on and found.order == 9 and found.largest_order == 10
    assert found.reported_kib == 3153268
    assert "2048 KiB" in found.brief()


def test_an_order_above_the_largest_block_reports_nothing(tmp_path: Path) -> None:
    found = page_reporting(*machine(tmp_path, "11"))
    assert not found.on
    assert found.brief().startswith("off")
    assert found.reported_kib is None  # upstream kernels do not count it


def test_a_machine_without_page_reporting(tmp_path: Path) -> None:
    found = page_reporting(tmp_path / "absent", tmp_path / "no-buddyinfo")
    assert not found.on and found.order is None and found.largest_order is None
    assert found.brief() == "none"
