"""A built table (``aggregate.Table``) as Markdown, CSV and LaTeX (booktabs) text.

Pure string functions with stable formatting, so the same inputs give byte-identical files: one decimal like
the paper, ``±`` the sample std with one decimal, the paper's "-" for a missing value. Text from records (labels,
deviations) is put on one line and escaped for each format, so no label can break a table.
"""
import csv
import io

from bt_transfer.report.aggregate import variant_setting
from bt_transfer.report.curves import STAGES

MISSING = "-"
LEGEND = {"bold": ("Bold", "best per column"),
          "underline-top3-ssl": ("Underlined", "top-3 self-supervised methods per column")}
EPOCH_LEGEND = {
    "last": "Our accuracies are the last epoch's (the official evaluate.py reports the best epoch's, the maximum "
            "over epochs on the validation set).",
    "best": "Our accuracies are the best epoch's, the maximum over epochs on the validation set, as the official "
            "evaluate.py reports them (not the last epoch's).",
}


def one_line(text):
    """``text`` with every line break (\\n, \\r, and the others str.splitlines knows) replaced by a space."""
    return " ".join(text.splitlines())


def _title(table):
    return f"Table {table.spec.number}. {table.spec.caption}"


def _reference(table):
    return next(row for row in table.rows if row.role == "barlow-twins")


def _delta_label(table):
    return f"Δ vs. {_reference(table).method}"


def _legend(table, emphasize, escape=str):
    """The rules of the table in one paragraph; ``emphasize(word, mark)`` renders the marked word."""
    word, meaning = LEGEND[table.spec.marking]
    mark = "bold" if table.spec.marking == "bold" else "underline"
    rest = (f": {meaning}, among the paper's rows and our full-protocol runs (runs off the protocol are never "
            "marked). Ours: mean ± sample std over n seeds (no std for n=1). "
            f"{_delta_label(table)}: our one-decimal mean minus the paper's value.")
    if table.epoch:
        rest += " " + EPOCH_LEGEND[table.epoch]
    return emphasize(word, mark) + escape(rest)


def _signed(value):
    return f"{value:+.1f}".replace("-", "−") if value else "0.0"


# ---------------------------------------------------------------- Markdown

def md_escape(text):
    """Text for a Markdown table cell or paragraph: one line, pipes escaped, no HTML tags."""
    return one_line(text).replace("|", r"\|").replace("<", "&lt;")


def _md_emphasize(text, mark):
    return {"bold": f"**{text}**", "underline": f"<u>{text}</u>", None: text}[mark]


def _md_cell(row, key):
    stat = row.cells.get(key)
    if stat is None:
        return MISSING
    mean = _md_emphasize(f"{stat.mean:.1f}", row.marks.get(key))
    return mean if stat.std is None else f"{mean} ± {stat.std:.1f}"


def markdown(table):
    columns = table.spec.columns
    # Markdown has no spanning headers: the group names its first column only, as it would span in the paper.
    headers = ["Method"] + [f"{c.group} {c.header}".strip() if i == 0 or columns[i - 1].group != c.group
                            else c.header for i, c in enumerate(columns)] + ["Source"]
    lines = [f"**{_title(table)}**", "",
             "| " + " | ".join(headers) + " |",
             "|:--" + "|--:" * len(columns) + "|:--|"]
    for row in table.rows:
        method = md_escape(row.method) + (f"<sup>{row.marker}</sup>" if row.marker else "")
        cells = [_md_cell(row, c.key) for c in columns]
        lines.append("| " + " | ".join([method, *cells, md_escape(row.source)]) + " |")
        if row.kind == "run":
            deltas = [_signed(row.delta[c.key]) if c.key in row.delta else MISSING for c in columns]
            lines.append("| " + " | ".join([f"↳ {_delta_label(table)}", *deltas, ""]) + " |")
    lines += ["", _legend(table, _md_emphasize)]
    for marker, note in table.footnotes:
        lines += ["", f"<sup>{marker}</sup> {md_escape(note)}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CSV

def csv_text(table):
    """One line per row; per column its mean, std, n and delta, full precision; ``marked`` lists the marked columns."""
    columns = table.spec.columns
    header = ["method", "kind", "role", "source", "protocol", "variant", "deviations", "weights_sha256", "seeds",
              "epoch", "marked"]
    for c in columns:
        header += [c.key, f"{c.key}:std", f"{c.key}:n", f"{c.key}:delta"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)

    def number(value):
        return "" if value is None else repr(round(value, 4))

    for row in table.rows:
        protocol = "paper" if row.kind == "paper" else ("full" if row.full_protocol else "deviates")
        variant = variant_setting(row.variant)
        deviations = " | ".join(f"{task}: {'; '.join(g.deviations)}" for task, g in row.groups.items() if g.deviations)
        seeds = " | ".join(f"{task}: {' '.join(map(str, g.seeds))}" for task, g in row.groups.items())
        epoch = table.epoch if row.kind == "run" and table.epoch else ""
        marked = " ".join(c.key for c in columns if c.key in row.marks)
        line = [one_line(text) for text in (row.method, row.kind, row.role, row.source, protocol, variant, deviations,
                                            row.sha256, seeds, epoch, marked)]
        for c in columns:
            stat = row.cells.get(c.key)
            line += [number(stat and stat.mean), number(stat and stat.std),
                     "" if stat is None or stat.n is None else str(stat.n), number(row.delta.get(c.key))]
        writer.writerow(line)
    return out.getvalue()


# ---------------------------------------------------------------- LaTeX

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",
                "Δ": r"$\Delta$", "−": "$-$", "±": r"$\pm$"}


def tex_escape(text):
    """Text for LaTeX: one line (a blank line would end the paragraph inside a table), special characters escaped."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in one_line(text))


def _tex_emphasize(text, mark):
    return {"bold": rf"\textbf{{{text}}}", "underline": rf"\underline{{{text}}}", None: text}[mark]


def _tex_cell(row, key):
    stat = row.cells.get(key)
    if stat is None:
        return "--"
    mean = _tex_emphasize(f"{stat.mean:.1f}", row.marks.get(key))
    return mean if stat.std is None else rf"{mean}{{\scriptsize$\pm${stat.std:.1f}}}"


def _tex_groups(columns):
    """The spanning header line and its cmidrules, or nothing when the table has no column groups."""
    spans = []
    for index, column in enumerate(columns, start=2):
        if spans and spans[-1][0] == column.group:
            spans[-1][2] = index
        else:
            spans.append([column.group, index, index])
    if all(not group for group, _, _ in spans):
        return []
    heads = " & ".join(rf"\multicolumn{{{last - first + 1}}}{{c}}{{{tex_escape(group)}}}" for group, first, last in spans)
    rules = " ".join(rf"\cmidrule(lr){{{first}-{last}}}" for _, first, last in spans)
    return [rf" & {heads} \\", rules]


def latex(table):
    """A booktabs ``table`` environment: paper rows, a rule, then ours with their delta rows; footnotes below."""
    columns = table.spec.columns
    sources = sorted({row.source for row in table.rows if row.kind == "paper"})
    caption = (tex_escape(f"{_title(table)} Published rows: {'; '.join(sources)}. ")
               + _legend(table, _tex_emphasize, tex_escape))
    lines = [r"% Generated by python -m bt_transfer.report; needs \usepackage{booktabs}.",
             r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             rf"\label{{tab:{table.spec.name}}}", rf"\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule",
             *_tex_groups(columns),
             "Method & " + " & ".join(c.tex for c in columns) + r" \\", r"\midrule"]
    for index, row in enumerate(table.rows):
        if row.kind == "run" and table.rows[index - 1].kind == "paper":
            lines.append(r"\midrule")
        method = tex_escape(row.method) + (rf"\textsuperscript{{{row.marker}}}" if row.marker else "")
        if row.kind == "run":
            method += rf" {{\scriptsize ({tex_escape(row.source.split(';')[0].removeprefix('this suite, '))})}}"
        lines.append(" & ".join([method, *(_tex_cell(row, c.key) for c in columns)]) + r" \\")
        if row.kind == "run":
            deltas = [tex_escape(_signed(row.delta[c.key])) if c.key in row.delta else "--" for c in columns]
            lines.append(" & ".join([rf"\quad {tex_escape(_delta_label(table))}", *deltas]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for marker, note in table.footnotes:
        lines.append(rf"\par\smallskip{{\footnotesize\textsuperscript{{{marker}}}{tex_escape(note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- curves

def curves_csv(stage, groups, panels):
    """The data behind a curves figure, one point a line: every run's and, where a group averages several runs,
    their mean's (``run`` "mean", ``seed`` the seeds averaged). ``panels`` are the figure's (metric, axis label)."""
    x_name = STAGES[stage].x
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "weights_sha256", "variant", "run", "seed", "finished", "metric", x_name, "value"])
    for group in groups:
        head = [one_line(group.label), group.sha256, variant_setting(group.variant)]
        for metric, _ in panels:
            for run in group.runs:
                if metric in run.series:
                    seed = "" if run.seed is None else str(run.seed)
                    for x, y in zip(*run.series[metric]):
                        writer.writerow([*head, one_line(str(run.folder)), seed, str(run.finished).lower(), metric,
                                         x, repr(y)])
            if mean := group.mean(metric):
                seeds = " ".join(str(run.seed) for run in group.averaged(metric) if run.seed is not None)
                for x, y in zip(*mean):
                    writer.writerow([*head, "mean", seeds, "", metric, x, repr(y)])
    return out.getvalue()
