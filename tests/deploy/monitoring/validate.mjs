// Validates monitoring.coreos.com objects against prometheus-operator's CRD schemas (the
// generated validators of @kubernetes-models/prometheus-operator). Reads a JSON array of
// objects on stdin; prints a JSON array of {kind, name, error} (error null when valid).
import fs from 'node:fs';
import * as v1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import * as v1alpha1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1';

const versions = { 'monitoring.coreos.com/v1': v1, 'monitoring.coreos.com/v1alpha1': v1alpha1 };
const results = JSON.parse(fs.readFileSync(0, 'utf8')).map((doc) => {
  const where = { kind: doc.kind, name: doc.metadata?.name };
  const Model = (versions[doc.apiVersion] ?? {})[doc.kind];
  if (!Model) return { ...where, error: `no schema for ${doc.apiVersion} ${doc.kind}` };
  try {
    new Model(doc).validate();
    return { ...where, error: null };
  } catch (error) {
    return { ...where, error: String(error?.message ?? error) };
  }
});
process.stdout.write(JSON.stringify(results));
