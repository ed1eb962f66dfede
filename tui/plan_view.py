"""How a plan is shown: the JSON object of `ftui plan --json` and the rich tables."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Iterable

from planner import PARTS, Estimate, Plan
from planner.catalog import ModelEntry
from planner.memory import PHASES, MemoryEstimate
from planner.recommend import Alternative
from planner.report import alternative_json, estimate_json, gib, model_json, setup_json

if TYPE_CHECKING:
    from planner.dataset_stats import DatasetStats

GIB = 2**30


def duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.4 h`, `2.1 days`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --- JSON --------------------------------------------------------------------------------


def to_json(plan: Plan, gpu_source: str, stats: DatasetStats | None = None) -> dict[str, Any]:
    c = plan.cluster
    out: dict[str, Any] = {
        "model": model_json(plan.model),
        "cluster": {
            "gpu": c.gpu.key,
            "gpu_name": c.gpu.name,
            "gpu_memory_gib": round(c.gpu.memory_gib, 2),
            "gpus_per_node": c.gpus_per_node,
            "nodes": c.nodes,
            "world": c.world,
            "source": gpu_source,
            "host_ram_gib": gib(c.host_ram_bytes) if c.host_ram_bytes else None,
        },
    }
    if stats is not None:
        out["dataset"] = asdict(stats)
    rec = plan.recommendation
    if rec is None:
        out["estimate"] = estimate_json(plan.estimate, stats)
        return out
    out["recommendation"] = {
        "setup": setup_json(plan.estimate.setup) if plan.estimate else None,
        "estimate": estimate_json(plan.estimate, stats) if plan.estimate else None,
        "reasons": list(rec.reasons),
        "grad_accum": rec.grad_accum,
        "global_batch": rec.global_batch,
        "learning_rate": rec.learning_rate,
    }
    out["alternatives"] = [alternative_json(a) for a in rec.alternatives]
    return out


# --- rich --------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(highlight=False, emoji=False)


class Grid:
    """A borderless table printed as plain columns: what rich's Table(box=None, pad_edge=False)
    shows, without its per-cell measuring and rendering (a third of `ftui plan`'s cold start).
    Columns are two spaces apart; the last one wraps at word boundaries to fit the console."""

    GAP = "  "
    MIN_LAST = 20

    def __init__(self, title: str, columns: Iterable[tuple[str, str]]):
        self.title = title
        self.columns = list(columns)
        """(header, "left" | "right") per column"""
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(cells))

    def lines(self, width: int) -> list[tuple[str, str]]:
        """(text, style) per printed line: the title, the header, then the rows."""
        import textwrap

        heads = [h for h, _ in self.columns]
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(heads)]
        fixed = sum(widths[:-1]) + len(self.GAP) * (len(widths) - 1)
        widths[-1] = max(min(widths[-1], width - fixed), min(widths[-1], self.MIN_LAST))

        def line(cells: list[str]) -> str:
            out = [
                c.rjust(w) if just == "right" else c.ljust(w)
                for c, w, (_, just) in zip(cells, widths, self.columns, strict=True)
            ]
            return self.GAP.join(out).rstrip()

        result = [(self.title, "italic"), (line(heads), "bold")]
        for row in self.rows:
            last = textwrap.wrap(row[-1], widths[-1], break_on_hyphens=False) or [""]
            result.append((line([*row[:-1], last[0]]), ""))
            blank = [""] * (len(row) - 1)
            result += [(line([*blank, more]), "") for more in last[1:]]
        return result

    def print(self, console) -> None:
        from rich.text import Text

        text = Text()
        for i, (content, style) in enumerate(self.lines(console.width)):
            if i:
                text.append("\n")
            text.append(content, style=style or None)
        console.print(text, soft_wrap=True)


def memory_table(mem: MemoryEstimate) -> Grid:
    peak = mem.peak_phase
    labels = {"backward": "after forward", "step": "optimizer step"}
    t = Grid(
        "Per-GPU memory (GiB)",
        [("", "left"), *((labels[ph] + (" (peak)" if ph == peak else ""), "right") for ph in PHASES)],
    )
    for part in PARTS:
        t.add_row(
            part, *(f"{mem.part(part, ph) / GIB:.2f}" if part != "overhead" or ph == peak else "" for ph in PHASES)
        )
    t.add_row("", "", "")
    t.add_row("peak allocated", f"{mem.peak_allocated / GIB:.2f}", "")
    t.add_row("peak reserved", f"{mem.peak_reserved / GIB:.2f}", "")
    t.add_row("NVML used", f"{mem.nvml_used / GIB:.2f}", "")
    t.add_row("GPU memory", f"{mem.capacity_bytes / GIB:.2f}", "")
    return t


def render_estimate(console, est: Estimate, stats: DatasetStats | None, title: str) -> None:
    mem = est.memory
    console.print(f"[bold]{title}[/bold]: {est.setup.summary()}")
    memory_table(mem).print(console)
    verdict = "[green]fits[/green]" if est.fits else "[red]does not fit[/red]"
    console.print(
        f"{verdict}: needs {mem.required / GIB:.1f} of {mem.capacity_bytes / GIB:.1f} GiB per GPU · "
        f"max micro-batch {est.max_micro_batch} · max seq len {est.max_seq_len:,} · "
        f"{est.throughput.tokens_per_s:,.0f} tokens/s · host RAM {mem.cpu_ram_bytes / GIB:.0f} GiB per node"
    )
    if stats is not None:
        seconds = stats.total_tokens / est.throughput.tokens_per_s
        console.print(f"one epoch of ~{stats.total_tokens:,} tokens: about {duration(seconds)}")
    for r in est.refusals:
        console.print(f"[red]refused[/red] ({r.rule}): {r.reason}")
    for w in est.warnings:
        console.print(f"[yellow]note[/yellow]: {w}")


def alternatives_table(alts: Iterable[Alternative]) -> Grid:
    t = Grid(
        "Alternatives",
        (
            ("tuner", "left"),
            ("ZeRO", "right"),
            ("fits", "left"),
            ("micro-batch", "right"),
            ("GiB/GPU", "right"),
            ("tokens/s", "right"),
            ("why not", "left"),
        ),
    )
    for row in alternative_rows(alts):
        t.add_row(*row)
    return t


def alternative_rows(alts) -> list[tuple[str, str, str, str, str, str, str]]:
    """tuner, ZeRO stage(s), fits, micro-batch, GiB per GPU, tokens/s, why not: one row per
    alternative, with the same refusal over several stages merged into one row. The micro-batch is
    the one the memory and speed were planned with (the largest that fits differs by stage, so a
    ZeRO-3 row can need more GiB than a ZeRO-1 one)."""
    rows = []
    for group in merge_refusals(list(alts)):
        a, c = group[0], group[0].candidate
        stages = a.engine if len(group) == 1 else f"{group[0].zero}-{group[-1].zero}"
        planned = c is not None and c.refusal is None
        rows.append(
            (
                a.tuner,
                stages,
                "yes" if a.fits else "no",
                str(c.setup.micro_batch) if planned else "-",
                f"{c.memory.required / GIB:.1f}" if planned else "-",
                f"{c.throughput.tokens_per_s:,.0f}" if c and a.fits else "-",
                a.reason,
            )
        )
    return rows


def merge_refusals(alts: list[Alternative]) -> list[list[Alternative]]:
    """Consecutive ZeRO stages of one tuner refused for the same reason share a row."""
    groups: list[list[Alternative]] = []
    for a in alts:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and a.reason.startswith("refused")
            and a.reason == last.reason
            and a.tuner == last.tuner
            and a.fsdp == last.fsdp == "none"
            and a.zero == last.zero + 1
        ):
            groups[-1].append(a)
        else:
            groups.append([a])
    return groups


def render(plan: Plan, gpu_source: str, stats: DatasetStats | None = None) -> None:
    console = _console()
    m, c = plan.model, plan.cluster
    a = m.arch
    alias = f" ({m.source})" if m.source != "catalog" else ""
    console.print(
        f"[bold]Model[/bold]  {m.name}{alias} · {a.params / 1e9:.2f} B params · {a.layers} layers x "
        f"{a.hidden} · vocab {a.vocab:,}"
    )
    origin = gpu_source if gpu_source.startswith("assumed") else f"from {gpu_source}"
    console.print(
        f"[bold]GPUs[/bold]   {c.world} x {c.gpu.name} ({c.gpu.memory_gib:.1f} GiB)"
        f" · {c.nodes} node{'s' if c.nodes > 1 else ''} [dim]({origin})[/dim]"
    )
    if stats is not None:
        console.print(
            f"[bold]Data[/bold]   {stats.samples:,} samples · ~{stats.total_tokens:,} tokens · "
            f"p95 {stats.p95:,} / max {stats.max:,} tokens per sample (estimated)"
        )
    console.print()
    rec = plan.recommendation
    if rec is None:
        render_estimate(console, plan.estimate, stats, "Setup")
        return
    if plan.estimate is None:
        console.print(f"[red]No setup fits.[/red] {rec.reasons[0]}")
    else:
        render_estimate(console, plan.estimate, stats, "Recommended")
        console.print()
        for reason in rec.reasons:
            console.print(f"  • {reason}")
    console.print()
    alternatives_table(rec.alternatives).print(console)


def print_models(models: Iterable[ModelEntry], as_json: bool = False) -> None:
    models = list(models)
    if as_json:
        import json
        import sys

        json.dump([model_json(m) for m in models], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("name", "params", "layers", "hidden", "kv heads", "vocab", "HF id"):
        t.add_column(col)
    for m in models:
        a = m.arch
        t.add_row(
            m.name,
            f"{a.params / 1e9:.2f} B",
            str(a.layers),
            str(a.hidden),
            f"{a.kv_heads}/{a.heads}",
            f"{a.vocab:,}",
            m.hf_id,
        )
    _console().print(t)


# --- --verify ------------------------------------------------------------------------------


def traced_phase(verified: dict[str, Any], planner_phase: str) -> float:
    """The traced GiB to set beside a planner phase: its `backward` is the forward and backward pass."""
    phases = verified["phases"]
    if planner_phase == "backward":
        return max(phases["forward"]["allocated_gib"], phases["backward"]["allocated_gib"])
    return phases["step"]["allocated_gib"]


def verified_json(verified: dict[str, Any], mem: MemoryEstimate | None) -> dict[str, Any]:
    """The `verified` key: the trace's answer, plus the planner's figures on the same footing."""
    out = dict(verified)
    if mem is not None and verified.get("traceable"):
        out["planned"] = {
            "peak_allocated_gib": gib(max(sum(mem.traceable_parts(ph).values()) for ph in PHASES)),
            "phases": {ph: {"allocated_gib": gib(sum(mem.traceable_parts(ph).values()))} for ph in PHASES},
            "parts": {ph: {k: gib(v) for k, v in mem.traceable_parts(ph).items()} for ph in PHASES},
        }
    return out


def render_verified(verified: dict[str, Any], mem: MemoryEstimate | None) -> None:
    """Planned and traced allocated peaks side by side, per phase and per part."""
    from rich.table import Table

    console = _console()
    console.print()
    if not verified.get("traceable"):
        console.print(f"[yellow]not traceable[/yellow]: {verified.get('reason', 'unknown reason')}")
        return
    a, b = verified["layers_traced"]
    depth = f"{a} layers traced whole" if a == b else f"{a} and {b} layers traced, extrapolated to {verified['layers']}"
    console.print(
        f"[bold]Verified[/bold] against a trace of ftui's own training step (fake tensors on the CPU, {depth}, "
        f"{verified['seconds']:.1f} s); allocated memory only, without CUDA's own buffers"
    )
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("phase")
    if mem is not None:
        table.add_column("planned GiB", justify="right")
    table.add_column("traced GiB", justify="right")
    if mem is not None:
        table.add_column("difference", justify="right")
    names = {"backward": "forward + backward", "step": "optimizer step"}
    for phase in PHASES:
        traced = traced_phase(verified, phase)
        row = [names[phase]]
        if mem is not None:
            planned = sum(mem.traceable_parts(phase).values()) / GIB
            diff = f"{100 * (planned / traced - 1):+.1f} %" if traced else "-"
            row += [f"{planned:.2f}", f"{traced:.2f}", diff]
        else:
            row.append(f"{traced:.2f}")
        table.add_row(*row)
    console.print(table)
    console.print("by part, at the forward + backward peak:")
    parts = Table(show_edge=False, pad_edge=False)
    parts.add_column("part")
    if mem is not None:
        parts.add_column("planned GiB", justify="right")
    parts.add_column("traced GiB", justify="right")
    fwd, bwd = verified["phases"]["forward"]["allocated_gib"], verified["phases"]["backward"]["allocated_gib"]
    traced_parts = verified["parts"]["forward" if fwd >= bwd else "backward"]
    planned_parts = mem.traceable_parts("backward") if mem is not None else {}
    for part in (*PARTS, "temporaries"):
        traced = traced_parts.get(part, 0.0)
        planned = planned_parts.get(part, 0.0) / GIB
        if not traced and not planned:
            continue
        parts.add_row(part, *([f"{planned:.2f}"] if mem is not None else []), f"{traced:.2f}")
    console.print(parts)
