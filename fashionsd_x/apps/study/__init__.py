"""The user study: pairwise blind comparisons built from an evaluation, served to raters, analysed.

The paper's evaluation asked fashion designers to judge the generated garments; this package runs such a study:
    design.py   which comparisons each rater gets, in which order, which variant on the left (balanced, seeded)
    create.py   `fsdx study create`: an evaluation's images -> one self-contained SQLite study file
    db.py       every read and write of that file (WAL, one commit per answer, idempotent answers)
    server.py   `fsdx study serve`: the rating page (page.html) and its JSON API
    stats.py    win rates, Wilson intervals, exact binomial tests, Holm, Krippendorff's alpha
    analyze.py  `fsdx study analyze`: results.md, results.json and charts
"""
