"""report.html of `textok caption-report`: one self-contained page (no network, no side files).

    from textok.pipeline.captioning.report_html import render_report_html
    html = render_report_html(report, worst_rows, images=None)

Figures are matplotlib PNGs and the contact sheet's thumbnails JPEGs, both embedded as
`data:` URIs, so the page opens anywhere (mailed, on a bucket, offline) and shows exactly
what the report saw. An image that cannot be read shows the reason in its place, never a
stand-in picture.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from textok.schemas.caption_flags import CHECKS

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
td.t,th.t{text-align:left}tr:nth-child(even){background:#f6f6f6}
.figs img{max-width:460px;margin:4px}.sheet{display:flex;flex-wrap:wrap;gap:10px}
.card{width:220px;border:1px solid #ccc;padding:6px;font-size:12px}.card img{max-width:208px;display:block}
.why{color:#a00}.missing{height:120px;background:#eee;color:#a00;padding:6px}
.scroll{max-height:520px;overflow:auto;display:inline-block}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def figures(report: dict[str, Any]) -> dict[str, str]:
    """name -> data URI of each histogram / bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    hist = {int(k): v for k, v in report["words"]["histogram"].items()}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(hist), list(hist.values()), width=1.0, color="#4c72b0")
    ax.axvline(report["words"]["short_below"] - 0.5, color="#c44", ls="--", lw=1, label="short below")
    ax.set(xlabel="words per caption", ylabel="captions", title="Caption length")
    ax.legend(fontsize=8)
    out["words"] = _png(fig)

    checks = [c for c in CHECKS if not (c == "clip_low" and "clip" not in report)]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(checks[::-1], [report["flags"][c] for c in checks][::-1], color="#dd8452")
    ax.set(xlabel="rows flagged", title="Flags per check")
    out["flags"] = _png(fig)

    if "clip" in report:
        c = report["clip"]
        edges, counts = np.array(c["histogram"]["edges"]), np.array(c["histogram"]["counts"])
        used = np.flatnonzero(counts)
        fig, ax = plt.subplots(figsize=(6, 3))
        if used.size:
            lo, hi = used[0], used[-1] + 1
            ax.bar(edges[lo:hi], counts[lo:hi], width=np.diff(edges)[lo:hi], align="edge", color="#55a868")
        if c["threshold"] is not None:
            ax.axvline(c["threshold"], color="#c44", ls="--", lw=1, label=f"p{c['percentile']:g} threshold")
            ax.legend(fontsize=8)
        ax.set(xlabel="image–text cosine", ylabel="captions", title=f"Agreement ({c['model']})")
        out["clip"] = _png(fig)

    classes = [k for k in report["classes"] if k["rows"]]
    if classes:
        low = sorted(classes, key=lambda k: k["mention_rate"])[:25]
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.22 * len(low)))
        ax.barh([str(k["class_name"]) for k in low][::-1], [k["mention_rate"] for k in low][::-1], color="#8172b3")
        ax.set(xlim=(0, 1), xlabel="share of captions naming the class or a synonym",
               title="Class mention rate (lowest classes)")
        out["classes"] = _png(fig)
    return out


def thumbnail(row: dict, images: str | None, size: int) -> tuple[str | None, str | None]:
    """(JPEG data URI, None) or (None, why the image could not be shown)."""
    from textok.pipeline.captioning.report import load_image

    img, why = load_image(row, images, max_side=size)
    if img is None:
        return None, why
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None


def _table(header: list[str], rows: list[list[Any]], text_cols: int = 1) -> str:
    e = html.escape
    head = "".join(f"<th class='{'t' if i < text_cols else ''}'>{e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='{'t' if i < text_cols else ''}'>{e(str(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_report_html(report: dict[str, Any], worst: list[dict], images: str | None = None,
                       thumb: int = 160) -> str:
    e = html.escape
    figs = figures(report)
    n = report["rows"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Caption report</title><style>{_CSS}</style>"
             f"</head><body><h1>Caption report: {e(report['captions'])}</h1>",
             f"<p>{n} captions in {report['caption_files']} file(s); {report['flags']['flagged']} flagged "
             f"({_pct(report['rates']['flagged'])}) by any of {e(', '.join(report['default_checks']))}.</p>"]
    parts.append("<h2>Flags</h2>" + _table(
        ["check", "rows", "rate", "meaning"],
        [[c, report["flags"][c], _pct(report["rates"][c]), report["checks"][c]] for c in CHECKS], text_cols=1))
    parts.append("<div class='figs'>" + "".join(f"<img alt='{k}' src='{v}'>" for k, v in figs.items()) + "</div>")
    d = report["duplicates"]
    parts.append(f"<h2>Duplicates</h2><p>Exact: {d['exact_rows']} rows ({_pct(d['exact_rate'])}), "
                 f"{d['captions_repeated']} captions repeated; method: {e(d['exact_method'])}.<br>Near: "
                 f"{d['near_rows']} rows ({_pct(d['near_rate'])}); method: {e(d['near_method'])}.</p>")
    if report["most_common"]:
        parts.append(_table(["most common captions", "count"],
                            [[m["caption"], m["count"]] for m in report["most_common"]]))
    lang = report["language"]
    parts.append(f"<h2>Language</h2><p>{e(lang['method'])}</p>"
                 + _table(["language", "rows"], [[k, v] for k, v in lang["counts"].items()]))
    parts.append("<h2>By captioner and prompt version</h2>")
    for title, groups in (("captioner", report["by_captioner"]), ("prompt version", report["by_prompt_version"])):
        parts.append(_table([title, "rows", "mean words", "flagged", *CHECKS],
                            [[k, g["rows"], g["mean_words"], _pct(g["flagged_rate"]),
                              *[g["checks"].get(c, 0) for c in CHECKS]] for k, g in groups.items()]) + "<br>")
    if report["classes"]:
        cm = report["class_mentions"]
        parts.append(f"<h2>Classes</h2><p>{len(report['classes'])} classes; mention rate {_pct(cm['mention_rate'])} "
                     f"(synonyms: {e(cm['synonyms'])}).</p><div class='scroll'>")
        has_clip = "clip" in report
        parts.append(_table(
            ["label", "class", "rows", "mention rate", "flagged", "mean words"]
            + (["clip mean", "clip p10"] if has_clip else []) + ["names counted"],
            [[k["label"], k["class_name"], k["rows"], _pct(k["mention_rate"]), k["flagged"], k["mean_words"]]
             + ([k.get("clip_mean"), k.get("clip_p10")] if has_clip else []) + [", ".join(k["names_checked"])]
             for k in report["classes"]], text_cols=2) + "</div>")
    dl = report.get("dead_letters") or {"rows": 0, "by_reason": {}}
    parts.append(f"<h2>Dead letters</h2><p>{dl['rows']} rows.</p>")
    if dl["rows"]:
        parts.append(_table(["stage/error", "rows", "examples"],
                            [[k, v, " | ".join(dl.get("examples", {}).get(k, []))] for k, v in dl["by_reason"].items()]))
    if "clip" in report:
        c = report["clip"]
        parts.append(f"<h2>Image–text agreement</h2><p>Model {e(str(c['model']))} ({e(c['class'])}); "
                     f"{c['scored']} rows scored, {c['unreadable_images']} images unreadable; mean cosine "
                     f"{c['mean']}; rows at or below p{c['percentile']:g} ({c['threshold']}) are flagged "
                     f"clip_low.</p>")
    parts.append(f"<h2>Worst-flagged rows</h2><p>{len(worst)} rows, most severe first.</p><div class='sheet'>")
    for row in worst:
        uri, why = thumbnail(row, images, thumb)
        pic = f"<img alt='{e(row['key'])}' src='{uri}'>" if uri else \
            f"<div class='missing'>image not shown: {e(str(why))}</div>"
        score = f"<br>clip {row['clip_score']:.3f}" if row.get("clip_score") is not None else ""
        parts.append(f"<div class='card'>{pic}<b>{e(row['key'])}</b> ({e(str(row['class_name']))})<br>"
                     f"“{e(row['caption'])}”<br><span class='why'>{e(row['reason'])}</span>{score}</div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)
