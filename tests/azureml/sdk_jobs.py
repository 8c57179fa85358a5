"""Writes Azure ML jobs with the real SDKs, offline, and reads storage with the real Storage SDK.

Used by tests/azureml_sdk.rs. Subcommands:
  v1 DIR STORES_JSON    the how-to's Estimator: DIR/configuration.json (what the SDK posts),
                        DIR/submit_body.json (the whole submission body), DIR/job.runconfig
  v2 DIR SPEC_JSON      command(...)._to_job().dump(DIR/job.yml)
  put CONN CONTAINER FILES_JSON [--public]   create the container, upload {name: text}
  get CONN CONTAINER    print {name: text} of every blob
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")


def v1(out_dir, stores):
    import logging

    logging.disable(logging.WARNING)
    from azureml._execution._commands import _serialize_run_config_to_dict
    from azureml.data.azure_storage_datastore import AzureBlobDatastore
    from azureml.train.estimator import Estimator

    def datastore(name):
        s = stores[name]
        # No workspace, no network: the object only names the container.
        return AzureBlobDatastore(None, name, container_name=s["container"],
                                  account_name=s["account"], account_key=s["key"])

    ds, ds1, ds3 = datastore("blobstore"), datastore("inputstore"), datastore("outstore")
    # The same container under a second name: on the node, a download of ds.path() would land
    # inside ds's own mount (<working_dir>/<datastore>/...), which dataref refuses.
    ds2 = datastore("barstore")
    # The how-to's lines, one reference of each kind.
    est = Estimator(
        source_directory=out_dir,
        entry_script="train.py",
        compute_target="cpu-cluster",
        script_params={
            "--data_dir": ds.as_mount(),
            "--bar_dir": ds2.path("./bar").as_download(path_on_compute="bar_local"),
            "--model_out": ds3.as_upload(path_on_compute="./bar.pkl"),
        },
        inputs=[ds1.as_download()],
        environment_variables={"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"},
    )
    run_config = est.run_config
    # The node has no conda environment: run the script with this interpreter.
    run_config.environment.python.user_managed_dependencies = True
    run_config.environment.python.interpreter_path = sys.executable
    configuration = _serialize_run_config_to_dict(run_config)
    with open(os.path.join(out_dir, "configuration.json"), "w") as f:
        json.dump(configuration, f, indent=4)
    body = {"TargetDetails": None, "Configuration": configuration,
            "TelemetryValues": {"amlClientType": "azureml-sdk-train"},
            "SnapshotId": "11111111-2222-3333-4444-555555555555"}
    with open(os.path.join(out_dir, "submit_body.json"), "w") as f:
        json.dump(body, f, indent=4)
    # save() writes <project>/.azureml/<name> (with the conda file beside it).
    os.makedirs(os.path.join(out_dir, ".azureml"), exist_ok=True)
    run_config.save(path=out_dir, name="job.runconfig")
    os.replace(os.path.join(out_dir, ".azureml", "job.runconfig"),
               os.path.join(out_dir, "job.runconfig"))


def v2(out_dir, spec):
    from azure.ai.ml import Input, Output, command

    job = command(
        code=out_dir,
        command=spec["command"],
        inputs={k: Input(**v) if isinstance(v, dict) else v for k, v in spec["inputs"].items()},
        outputs={k: Output(**v) for k, v in spec["outputs"].items()},
        environment_variables=spec.get("environment_variables", {}),
        environment="azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest",
        compute="cpu-cluster",
    )
    job._to_job().dump(os.path.join(out_dir, "job.yml"))


def service(conn):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(conn)


def put(conn, container, files, public):
    client = service(conn).get_container_client(container)
    client.create_container(public_access="container" if public else None)
    for name, text in files.items():
        client.upload_blob(name, text.encode(), overwrite=True)


def get(conn, container):
    client = service(conn).get_container_client(container)
    blobs = {b.name: client.download_blob(b.name).readall().decode()
             for b in client.list_blobs()}
    print(json.dumps(blobs, sort_keys=True))


if __name__ == "__main__":
    command_name, args = sys.argv[1], sys.argv[2:]
    if command_name == "v1":
        v1(args[0], json.loads(args[1]))
    elif command_name == "v2":
        v2(args[0], json.loads(args[1]))
    elif command_name == "put":
        put(args[0], args[1], json.loads(args[2]), "--public" in args[3:])
    elif command_name == "get":
        get(args[0], args[1])
    else:
        sys.exit(f"unknown subcommand {command_name}")
