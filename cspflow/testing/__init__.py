"""Small real jobs and helpers for cspflow's own plumbing tests (importable by workers)."""

from __future__ import annotations


def take_ids(args: tuple[str, str, int, str]) -> tuple[list[int], list[int]]:
    """Draw ``n`` launch ids and ``n`` fw ids from a LaunchPad (run in several processes at once).

    ``args`` is ``(uri, db_name, n, "cspflow" | "fireworks")``: the LaunchPad class to use.
    """
    from fireworks import LaunchPad

    from cspflow.scheduler import CspflowLaunchPad

    uri, name, n, cls_name = args
    cls = CspflowLaunchPad if cls_name == "cspflow" else LaunchPad
    lp = cls(host=uri, name=name, uri_mode=True, strm_lvl="ERROR")
    return [lp.get_new_launch_id() for _ in range(n)], [lp.get_new_fw_id() for _ in range(n)]
