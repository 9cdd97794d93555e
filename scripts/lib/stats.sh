# Shared by the benchmark scripts (sourced from the repository root): the figures they quote.

# The median of the numbers read, one a line (blank lines skipped); nothing for none.
median() { awk 'NF' | sort -n | awk '{v[NR] = $1} END {if (NR) print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
