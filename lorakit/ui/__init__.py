"""`lorakit ui`: a local web app to set up, run and watch training (docs/ui.md).

app.py serves the pages, the JSON API and the run streams; forms.py turns the schema into the
form and checks it; runs.py starts and stops training processes; security.py keeps requests to
the --root folders and to this machine; writers.py saves configs as TOML or kohya_ss JSON.
"""
