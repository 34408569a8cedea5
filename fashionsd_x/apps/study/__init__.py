"""The user study: pairwise blind comparisons built from an evaluation, served to raters, analysed."""
