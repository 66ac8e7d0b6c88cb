import asyncart


async def test_single_run_smoke(store, files):
    async with asyncart.init(project="demo", store=store) as run:
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_file(files / "a.txt")
        await artifact.add_dir(files / "images", name="images")
        logged = await run.log_artifact(artifact)
    assert logged.version == "v0"
    out = await logged.download(files.parent / "out")
    await logged.verify(out)
    report = await asyncart.audit("demo", store=store)
    assert report.ok, report
