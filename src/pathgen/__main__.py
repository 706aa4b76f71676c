from pathgen.cli import run

run()
