"""Plain report data and its rendering; imports no torch.

:mod:`.section` (the report's plain data: sections, tables, figures, pictures), :mod:`.text`
(display-safe strings), :mod:`.figures` (matplotlib, headless), :mod:`.render` (HTML, JSON,
Markdown), :mod:`.pdf` (WeasyPrint), and the outputs beside them: :mod:`.predictions`
(predictions.csv, written and read back) and :mod:`.gates` (conditions on summary metrics).
"""
