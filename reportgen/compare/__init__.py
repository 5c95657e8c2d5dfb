"""Comparing two models on the same images: the in-run baseline and ``reportgen compare``.

``metrics`` computes (both paths share :func:`~reportgen.compare.metrics.build_compare`),
``folders`` reads two archived report folders, ``present`` builds the section and the Markdown.
"""
