"""The doctor's pure part: `observation` reduces listed objects, `rules` diagnoses them, and
`report` renders the findings (regcred/doctor/command.py does the I/O)."""
