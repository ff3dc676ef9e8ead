"""``sjc fit``: posed image sets (transforms files, poses, pictures) and the photometric fit of a
field to them, with held-out evaluation and its output folder.
"""
