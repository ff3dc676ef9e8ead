"""``sjc batch``: the plan of recipes, seeds and sweeps (:mod:`plan`), running it in-process or
on Ray (:mod:`runner`), and the HTML gallery of the results (:mod:`gallery`).
"""
