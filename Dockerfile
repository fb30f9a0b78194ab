# One image for both the Flex Template launcher and the Dataflow workers (pass it to the job as
# sdk_container_image). Dependencies are installed here, at build time, so launches do not resolve or
# download packages (a common cause of launcher timeouts). Beam's version matches requirements.txt.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM apache/beam_python3.11_sdk:2.77.0
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY requirements.txt requirements.lock setup.py ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY sql/ sql/
COPY udf/ udf/
COPY templates/ templates/
RUN pip install --no-cache-dir --no-deps .

# The launcher runs this file with the template's parameters as flags; build.sh overrides it per pipeline.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/templates/sli/main.py
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py
# Everything is installed: keep the launcher from installing again at launch.
ENV PIP_NO_DEPS=True

ENTRYPOINT ["/opt/apache/beam/boot"]
