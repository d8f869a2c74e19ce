"""The induction case study (Sec. 6, App. H, I): sequences, heads, neurons and the study itself."""
