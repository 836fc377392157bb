"""Tables of committed rows: reading, writing, comparing and summarising results files."""
