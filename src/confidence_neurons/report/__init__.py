"""What each command shows: figures and sections, and the self-contained HTML report."""
