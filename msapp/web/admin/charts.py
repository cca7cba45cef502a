"""Geometry of the analytics page's charts, rendered as SVG by templates/admin/_charts.html: no script,
so the admin's strict CSP stays as it is. Every shape carries a title (the browser's tooltip) with its
figure and `data-*` values the browser tests read; each chart has a legend. The figures are the JSON
report's; nothing is computed here but geometry and labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

W, H, PAD_L, PAD_B, PAD_T = 720, 220, 40, 34, 10
CALL_SERIES = (("in_answered", "входящие: принят", "#2e7d32"), ("in_missed", "входящие: пропущен", "#c62828"),
               ("in_busy", "входящие: занято", "#ef6c00"), ("out_answered", "исходящие: принят", "#1565c0"),
               ("out_missed", "исходящие: не дозвонились", "#90a4ae"), ("out_busy", "исходящие: занято", "#b0bec5"))
CALLBACK_SERIES = (("within_15m", "за 15 мин", "#2e7d32"), ("within_1h", "за час", "#66bb6a"),
                   ("same_day", "в тот же день", "#fbc02d"), ("later", "позже", "#ef6c00"),
                   ("never", "ещё ждут", "#c62828"))
WEEKDAYS = ("Пн", "Вт", "Ср", "Чт", "Пт", "Сб", "Вс")


@dataclass
class Chart:
    kind: str
    label: str
    shapes: list
    legend: tuple = ()
    width: int = W
    height: int = H
    notes: list = field(default_factory=list)


def _rect(cls: str, x: float, y: float, w: float, h: float, fill: str, title: str, opacity: float = 1.0,
          **data) -> dict:
    return {"tag": "rect", "cls": cls, "x": round(x, 1), "y": round(y, 1), "w": round(w, 1), "h": round(h, 1),
            "fill": fill, "opacity": round(opacity, 2), "title": title, "data": data}


def _text(x: float, y: float, text: str, anchor: str = "middle", size: int = 10, fill: str = "#333") -> dict:
    return {"tag": "text", "x": round(x, 1), "y": round(y, 1), "text": text, "anchor": anchor, "size": size,
            "fill": fill}


def _short(at: str) -> str:
    """A bucket's axis label: the hour (`14`) or the day (`02.12`)."""
    return at[11:13] if "T" in at else f"{at[8:10]}.{at[5:7]}"


def _step(series: list) -> float:
    """The width of one bucket on the x axis."""
    return (W - PAD_L) / max(1, len(series))


def _axis(series: list, scale_max: float, unit: str = "") -> list:
    step = _step(series)
    out = [{"tag": "line", "x1": PAD_L, "y1": H - PAD_B, "x2": W, "y2": H - PAD_B},
           _text(PAD_L - 4, PAD_T + 8, f"{_num(scale_max)}{unit}", "end"), _text(PAD_L - 4, H - PAD_B, "0", "end")]
    every = max(1, len(series) // 16)
    for n, row in enumerate(series):
        if n % every == 0:
            out.append(_text(PAD_L + step * (n + 0.5), H - PAD_B + 14, _short(row["at"])))
    return out


def _num(value: float) -> str:
    return f"{value:g}" if value < 100 else f"{value:.0f}"


def calls(series: list) -> Chart:
    """Stacked bars: calls per bucket by direction and result."""
    top = max([sum(row[key] for key, _, _ in CALL_SERIES) for row in series] + [1])
    step = _step(series)
    body = _axis(series, top)
    for n, row in enumerate(series):
        y = H - PAD_B
        for key, label, color in CALL_SERIES:
            value = row[key]
            if not value:
                continue
            height = value / top * (H - PAD_B - PAD_T)
            y -= height
            body.append(_rect("bar", PAD_L + step * n + step * 0.1, y, step * 0.8, height, color,
                              f"{row['at']} · {label}: {value}", key=key, at=row["at"], value=value))
    return Chart("calls", "Звонки по времени", body, CALL_SERIES)


def _line(series: list, key: str, color: str, top: float, label: str, scale: float = 1.0) -> list:
    step = _step(series)
    points, marks = [], []
    for n, row in enumerate(series):
        value = row[key]
        if value is None:
            continue
        x = PAD_L + step * (n + 0.5)
        y = H - PAD_B - value * scale / top * (H - PAD_B - PAD_T)
        points.append(f"{x:.1f},{y:.1f}")
        marks.append({"tag": "circle", "x": round(x, 1), "y": round(y, 1), "fill": color,
                      "title": f"{row['at']} · {label}: {_num(value * scale)}",
                      "data": {"key": key, "at": row["at"], "value": value}})
    line = [{"tag": "polyline", "points": " ".join(points), "stroke": color}] if points else []
    return [*line, *marks]


def quality(series: list) -> Chart:
    """Missed share (%) and time to answer (p50, p90, seconds), one line each on a shared scale."""
    items = (("missed_share", "пропущено, %", "#c62828"), ("answer_p50_s", "ответ, медиана, с", "#1565c0"),
             ("answer_p90_s", "ответ, p90, с", "#90caf9"))
    top = max([row["missed_share"] * 100 for row in series if row["missed_share"] is not None]
              + [row[k] for row in series for k in ("answer_p50_s", "answer_p90_s") if row[k] is not None] + [1])
    body = _axis(series, top)
    body += _line(series, "missed_share", "#c62828", top, "пропущено, %", scale=100.0)
    body += _line(series, "answer_p50_s", "#1565c0", top, "ответ, медиана, с")
    body += _line(series, "answer_p90_s", "#90caf9", top, "ответ, p90, с")
    return Chart("quality", "Пропущенные и время ответа", body, items)


def callbacks(figures: dict) -> Chart:
    """One bar of the missed callers, split by how soon each was reached again."""
    total = figures["missed_callers"]
    body, x = [], 0.0
    for key, label, color in CALLBACK_SERIES:
        value = figures[key]
        if not value:
            continue
        width = value / total * W
        share = round(value * 100 / total)
        body.append(_rect("bar", x, 0, width, 36, color, f"{label}: {value} ({share} %)", key=key, value=value))
        if width > 40:
            body.append(_text(x + width / 2, 23, f"{share} %", size=12, fill="#fff"))
        x += width
    if not total:
        body.append(_text(0, 23, "Пропущенных звонков нет", "start", 12))
    return Chart("callbacks", "Перезвоны пропущенным", body, CALLBACK_SERIES, height=36)


def heatmap(cells: list) -> Chart:
    """Incoming calls by weekday × hour; the darker the red, the larger the share missed."""
    cw, ch, left, top = (W - 30) / 24, 22, 30, 14
    body = [_text(left + cw * h + cw / 2, 10, str(h), size=9) for h in range(0, 24, 2)]
    for d, day in enumerate(cells):
        body.append(_text(0, top + ch * d + 15, WEEKDAYS[d], "start", 11))
        for h, cell in enumerate(day):
            calls_n, share = cell["calls"], cell["missed_share"]
            fill = "#eeeeee" if not calls_n else "#c62828"
            opacity = 1.0 if not calls_n else 0.15 + 0.85 * (share or 0.0)
            text = f"{WEEKDAYS[d]} {h:02d}:00 · звонков: {calls_n}" + (
                f", пропущено {round(share * 100)} %" if calls_n else "")
            body.append(_rect("cell", left + cw * h, top + ch * d, cw - 1, ch - 1, fill, text, opacity,
                              day=d, hour=h, value=calls_n))
            if calls_n:
                body.append(_text(left + cw * h + cw / 2, top + ch * d + 15, str(calls_n), size=9))
    return Chart("heatmap", "Входящие по дням недели и часам", body, height=top + ch * 7)


def duration(seconds: Optional[float]) -> str:
    """`1 ч 05 мин`, `3 мин 20 с`, `45 с`; a dash for none."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} ч {seconds % 3600 // 60:02d} мин"
    if seconds >= 60:
        return f"{seconds // 60} мин {seconds % 60:02d} с"
    return f"{seconds} с"
