# A streamlearn worker image: `docker build -t streamlearn .`
FROM python:3.11-slim

WORKDIR /srv/streamlearn
COPY pyproject.toml README.md ./
COPY streamlearn ./streamlearn
RUN pip install --no-cache-dir . && useradd --system --home /srv/streamlearn streamlearn \
    && mkdir -p /var/lib/streamlearn && chown streamlearn /var/lib/streamlearn
USER streamlearn

ENV STREAMLEARN_WEB_HOST=0.0.0.0 \
    STREAMLEARN_DATA_DIR=/var/lib/streamlearn
EXPOSE 6066
# healthy once ready (/ready: partitions assigned), asked at its own STREAMLEARN_WEB_HOST:PORT
HEALTHCHECK --interval=10s --timeout=10s CMD ["streamlearn", "status", "--timeout", "3"]
ENTRYPOINT ["streamlearn"]
CMD ["worker"]
