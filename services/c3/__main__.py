from c3.cli import app

app()
