// Checks a Compose file without Docker (used by scripts/check-compose.sh).
//
//   node check-compose.mjs validate FILE      schema + cross-references; exit 1 with the reasons
//   node check-compose.mjs env FILE SERVICE   the service's environment as `export K='v'` lines
//
// The schema is the Compose Specification's JSON schema, vendored as
// compose-spec.json (see README.md here for its source). The YAML is read as
// Compose reads it, merge keys (`<<: *anchor`) included. Values are checked
// before ${VAR} interpolation; in this project the interpolated values are
// all strings, so that changes nothing for the schema.
//
// Beyond the schema, what Compose would refuse or what this project requires
// of its compose file:
//   - every depends_on target is a service of the file;
//   - restart is a restart policy Docker knows;
//   - every named volume a service mounts is declared under `volumes`;
//   - every bind-mounted path exists (relative to the file), except the
//     pending ones listed below;
//   - no service outside a profile publishes a port, except nginx (the one
//     way in); a profile's service may publish on the loopback interface only.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";
import { parseDocument } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));

// The only service that may publish a port outside profiles.
const PUBLIC_SERVICE = "nginx";

// Bind-mounted files another change adds (the monitoring profile's
// configuration). Missing is fine for these; once they exist they are
// checked like any other path.
const PENDING_BIND_SOURCES = new Set([
  "deploy/prometheus/prometheus.yml",
  "deploy/grafana/provisioning",
  "deploy/grafana/dashboards",
]);

function load(file) {
  const doc = parseDocument(readFileSync(file, "utf8"), { merge: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return { errors: doc.errors.map((e) => `YAML: ${e.message}`) };
  }
  return { compose: doc.toJS({ maxAliasCount: 1000 }), errors: [] };
}

function schemaErrors(compose) {
  const schema = JSON.parse(readFileSync(join(here, "compose-spec.json"), "utf8"));
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  const validate = ajv.compile(schema);
  if (validate(compose)) return [];
  // The most specific first: a wrong value deep inside a oneOf also fails
  // the oneOf's other branches higher up, which says less.
  const errors = [...validate.errors].sort((a, b) => b.instancePath.split("/").length - a.instancePath.split("/").length);
  return errors.map((e) => {
    const where = e.instancePath || "(top level)";
    const extra = e.params?.additionalProperty
      ? ` (${e.params.additionalProperty})`
      : e.params?.allowedValues
        ? ` (one of ${e.params.allowedValues.join(", ")})`
        : "";
    return `schema: ${where} ${e.message}${extra}`;
  });
}

// The `source` of a service's volume entry, and whether it is a bind mount.
function volumeSource(entry) {
  if (typeof entry === "string") {
    const parts = entry.split(":");
    if (parts.length < 2) return null; // an anonymous volume
    const source = parts[0];
    const bind = source.startsWith(".") || source.startsWith("/") || source.startsWith("~");
    return { source, bind };
  }
  if (entry && typeof entry === "object" && entry.source) {
    return { source: entry.source, bind: entry.type === "bind" };
  }
  return null;
}

function publishedPorts(service) {
  return (service.ports ?? []).map((p) => {
    if (typeof p === "object") return { hostIp: p.host_ip ?? "", published: p.published };
    const text = String(p);
    // [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]
    const parts = text.split("/")[0].split(":");
    if (parts.length === 3) return { hostIp: parts[0], published: parts[1] };
    if (parts.length === 2) return { hostIp: "", published: parts[0] };
    return { hostIp: "", published: "(random)" };
  });
}

const notes = [];

function crossReferenceErrors(compose, file) {
  const errors = [];
  const services = compose.services ?? {};
  const volumes = compose.volumes ?? {};
  const base = dirname(resolve(file));
  for (const [name, service] of Object.entries(services)) {
    const dependsOn = service.depends_on ?? [];
    const targets = Array.isArray(dependsOn) ? dependsOn : Object.keys(dependsOn);
    for (const target of targets) {
      if (!(target in services)) errors.push(`services.${name}.depends_on: no service "${target}"`);
    }
    for (const entry of service.volumes ?? []) {
      const v = volumeSource(entry);
      if (!v) continue;
      if (!v.bind) {
        if (!(v.source in volumes)) errors.push(`services.${name}.volumes: volume "${v.source}" is not declared under volumes`);
        continue;
      }
      const relative = v.source.replace(/^\.\//, "").replace(/\/$/, "");
      if (existsSync(resolve(base, v.source))) continue;
      if (PENDING_BIND_SOURCES.has(relative)) {
        notes.push(`services.${name}.volumes: ${v.source} does not exist yet (listed as pending)`);
      } else {
        errors.push(`services.${name}.volumes: bind-mounted path ${v.source} does not exist`);
      }
    }
    // The schema takes any string here; Docker refuses other policies.
    if (service.restart !== undefined && !/^(no|always|unless-stopped|on-failure(:\d+)?)$/.test(String(service.restart))) {
      errors.push(`services.${name}.restart: "${service.restart}" is not a restart policy (no, always, on-failure[:N], unless-stopped)`);
    }
    const ports = publishedPorts(service);
    const inProfile = (service.profiles ?? []).length > 0;
    for (const port of ports) {
      if (!inProfile && name !== PUBLIC_SERVICE) {
        errors.push(`services.${name}.ports: only ${PUBLIC_SERVICE} publishes ports (found ${port.published})`);
      } else if (inProfile && !["127.0.0.1", "[::1]", "::1"].includes(port.hostIp)) {
        errors.push(`services.${name}.ports: a profile's service publishes on 127.0.0.1 only (found ${port.hostIp || "all interfaces"}:${port.published})`);
      }
    }
  }
  return errors;
}

function shellQuote(value) {
  return `'${String(value).replace(/'/g, `'\\''`)}'`;
}

const [command, file, serviceName] = process.argv.slice(2);
if (!["validate", "env"].includes(command) || !file || (command === "env" && !serviceName)) {
  console.error("usage: check-compose.mjs validate FILE | env FILE SERVICE");
  process.exit(2);
}
const { compose, errors: yamlErrors } = load(file);
if (yamlErrors.length > 0) {
  for (const e of yamlErrors) console.error(`${file}: ${e}`);
  process.exit(1);
}

if (command === "validate") {
  const errors = [...schemaErrors(compose), ...crossReferenceErrors(compose, file)];
  for (const e of errors) console.error(`${file}: ${e}`);
  if (errors.length > 0) process.exit(1);
  for (const n of notes) console.log(`${file}: note: ${n}`);
  const names = Object.keys(compose.services ?? {});
  console.log(`${file}: valid (${names.length} services: ${names.join(", ")})`);
} else {
  const service = compose.services?.[serviceName];
  if (!service) {
    console.error(`${file}: no service ${serviceName}`);
    process.exit(1);
  }
  let env = service.environment ?? {};
  if (Array.isArray(env)) {
    env = Object.fromEntries(env.map((kv) => [kv.split("=")[0], kv.split("=").slice(1).join("=")]));
  }
  for (const [key, value] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) continue;
    console.log(`export ${key}=${shellQuote(value ?? "")}`);
  }
}
