use serde_json::{Value, json};

use super::{Import, NoteKind, import};

fn objects<'a>(import: &'a Import, kind: &str) -> Vec<&'a Value> {
    import.items.iter().filter(|item| item["kind"] == kind).collect()
}

fn named<'a>(import: &'a Import, kind: &str, name: &str) -> &'a Value {
    objects(import, kind)
        .into_iter()
        .find(|item| item["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}: {:#?}", import.items))
}

fn notes_at<'a>(import: &'a Import, path: &str) -> Vec<&'a super::Note> {
    import.notes.iter().filter(|note| note.path == path).collect()
}

/// The worked example of docs/migration.md §2.1, as the guide shows it.
fn guide_example() -> String {
    let guide = include_str!("../../../docs/migration.md");
    let section = guide.split("### 2.1").nth(1).expect("§2.1 in the guide");
    let block = section.split("```yaml\n").nth(1).expect("a yaml block");
    block.split("```").next().unwrap().to_owned()
}

#[test]
fn the_migration_guides_example_is_carried_whole() {
    let import = import(&guide_example()).unwrap();
    let wrong: Vec<_> =
        import.notes.iter().filter(|n| matches!(n.kind, NoteKind::NotCarried | NoteKind::Invalid)).collect();
    assert!(wrong.is_empty(), "everything in the example has a place: {wrong:#?}");

    let lab = named(&import, "Provider", "lab-static");
    assert_eq!(lab["spec"]["driver"], "static");
    let hosts = &lab["spec"]["pools"][0]["hosts"];
    assert_eq!(hosts[0]["name"], "arm64-01.lab.example.org");
    assert_eq!(hosts[0]["maxParallelJobs"], 2);
    assert_eq!(hosts[0]["pythonPath"], "/usr/bin/python3");
    assert_eq!(hosts[1]["labels"], json!(["arm64-lab"]), "a space-separated label string becomes a list");
    assert_eq!(hosts[1]["connectionPort"], 2222);
    assert_eq!(hosts[1]["timeout"], "10s");
    assert_eq!(hosts[1]["hostKeyChecking"], false);
    assert_eq!(lab["spec"]["pools"][0]["nodeAttributes"], json!({"executor-zone": "lab"}));

    let aws = named(&import, "Provider", "aws-us-east-1");
    assert_eq!(
        aws["metadata"]["annotations"][nodepool_crds::annotations::IMPORTED_FROM],
        "providers[1] (line 52)"
    );
    let spec = &aws["spec"];
    assert_eq!(spec["aws"]["region"], "us-east-1");
    assert_eq!(spec["credentialsSecretRef"]["name"], "aws-us-east-1-credentials");
    assert_eq!((spec["launchRetries"].clone(), spec["bootTimeout"].clone()), (json!(3), json!("3m")));
    assert_eq!(spec["maxConcurrency"], 10);
    assert_eq!(spec["rateLimit"]["requestsPerSecond"], 2.0);
    let pool = &spec["pools"][0];
    assert_eq!((pool["maxServers"].clone(), pool["maxCores"].clone()), (json!(40), json!(160)));
    assert_eq!(pool["aws"]["securityGroupIds"], json!(["sg-0123456789abcdef0"]));
    let large = &pool["labels"][1];
    assert_eq!((large["name"].clone(), large["spot"].clone()), (json!("ubuntu-noble-large"), json!(true)));
    assert_eq!(pool["labels"][0]["dynamicTags"]["zuul-tenant"], "{request.tenant_name}");
    assert_eq!(
        pool["labels"][0]["aws"]["imdsv2"], false,
        "unset imdsv2 leaves the AMI's setting, as Nodepool did"
    );

    let image = named(&import, "Image", "ubuntu-noble");
    assert_eq!(image["spec"]["aws"]["filters"][0], json!({"name": "owner-id", "values": ["099720109477"]}));
    assert_eq!(image["spec"]["pythonPath"], "/usr/bin/python3");
    let secret = named(&import, "Secret", "aws-us-east-1-credentials");
    assert!(secret["stringData"]["AWS_SECRET_ACCESS_KEY"].as_str().unwrap().starts_with("REPLACE-ME"));

    assert_eq!(named(&import, "Label", "ubuntu-noble")["spec"], json!({"minReady": 2, "maxReadyAge": "8h"}));
    let tenant = named(&import, "TenantLimit", "example-tenant");
    assert_eq!(
        tenant["spec"],
        json!({"tenant": "example-tenant", "maxServers": 20, "maxCores": 80, "maxRam": 327680})
    );

    let kinds: Vec<&str> = import.items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Secret", "Image", "Label", "Label", "Label", "TenantLimit", "Provider", "Provider"]);
    let zookeeper = notes_at(&import, "zookeeper-servers");
    assert_eq!(zookeeper[0].kind, NoteKind::Elsewhere);
    assert!(zookeeper[0].message.contains("zk1.example.org:2281,zk2.example.org:2281/zuul"), "{zookeeper:?}");
    assert_eq!(zookeeper[0].line, 1);
}

#[test]
fn what_cannot_be_carried_is_named_with_its_line() {
    let text = "\
diskimages:
  - name: ubuntu
providers:
  - name: cloud
    cloud: mycloud
  - name: ec2
    driver: aws
    region-name: us-east-1
    cloud-images:
      - name: img
        image-id: ami-0123
    pools:
      - name: main_pool
        max-servers: 5
        labels:
          - name: fleet-label
            cloud-image: img
            fleet:
              instance-types: [t3.small, t3.medium]
              allocation-strategy: lowest-price
          - name: plain
            cloud-image: img
            instance-type: t3.small
            iops: 3000
            something-new: 1
";
    let import = import(text).unwrap();
    let kind_at = |path: &str| notes_at(&import, path).iter().map(|n| (n.kind, n.line)).collect::<Vec<_>>();
    assert_eq!(kind_at("diskimages"), [(NoteKind::NotCarried, 1)]);
    assert_eq!(kind_at("providers[0]"), [(NoteKind::NotCarried, 4)], "openstack, Nodepool's default driver");
    assert!(kind_at("providers[1].pools[0].labels[0]").is_empty(), "a fleet label is carried");
    assert!(kind_at("providers[1].pools[0].labels[1].iops").is_empty(), "iops is carried");
    assert_eq!(kind_at("providers[1].pools[0].labels[1].something-new"), [(NoteKind::NotCarried, 25)]);
    assert_eq!(kind_at("providers[1].pools[0]"), [(NoteKind::Changed, 13)], "main_pool is renamed");
    let provider = named(&import, "Provider", "ec2");
    assert_eq!(provider["spec"]["pools"][0]["name"], "main-pool");
    let labels: Vec<&Value> = provider["spec"]["pools"][0]["labels"].as_array().unwrap().iter().collect();
    assert_eq!(labels.len(), 2);
    assert_eq!(
        labels[0]["aws"]["fleet"],
        json!({"instanceTypes": ["t3.small", "t3.medium"], "allocationStrategy": "lowest-price"})
    );
    assert_eq!(labels[1]["name"], "plain");
    assert_eq!(labels[1]["aws"]["iops"], 3000);
    assert!(objects(&import, "Provider").len() == 1, "the openstack provider makes no object");
}

#[test]
fn static_hosts_sharing_a_name_go_to_pools_of_their_own() {
    let text = "\
providers:
  - name: lab
    driver: static
    pools:
      - name: main
        priority: 5
        nodes:
          - {name: 127.0.0.1, labels: [a], connection-port: 2201}
          - {name: 127.0.0.1, labels: [a], connection-port: 2202}
          - {name: other, labels: a b, connection-type: winrm}
";
    let import = import(text).unwrap();
    let pools = &named(&import, "Provider", "lab")["spec"]["pools"];
    assert_eq!(pools[0]["name"], "main");
    assert_eq!(pools[0]["hosts"].as_array().unwrap().len(), 2);
    assert_eq!(pools[1]["name"], "main-2");
    assert_eq!(pools[1]["priority"], 5, "the extra pool keeps the pool's settings");
    assert_eq!(pools[1]["hosts"][0]["connectionPort"], 2202);
    assert_eq!(pools[0]["hosts"][1]["labels"], json!(["a", "b"]));
    assert_eq!(pools[0]["hosts"][1]["hostKeyChecking"], false, "no SSH key scan for a WinRM host");
}

#[test]
fn images_are_shared_where_providers_agree_and_split_where_not() {
    let text = "\
providers:
  - name: east
    driver: aws
    region-name: us-east-1
    cloud-images:
      - {name: noble, image-id: ami-1, username: ubuntu}
    pools: [{name: p, labels: [{name: l, cloud-image: noble, instance-type: t3.small}]}]
  - name: west
    driver: aws
    region-name: us-west-2
    cloud-images:
      - {name: noble, image-id: ami-2, username: ubuntu}
    pools: [{name: p, labels: [{name: l, cloud-image: noble, instance-type: t3.small}]}]
  - name: gce
    driver: gce
    project: p
    region: us-central1
    zone: us-central1-a
    cloud-images:
      - {name: noble, image-family: ubuntu-2404-lts, image-project: ubuntu-os-cloud, username: ubuntu, key: ssh-ed25519 AAAA}
    pools: [{name: p, labels: [{name: l, cloud-image: noble, instance-type: e2-small}]}]
";
    let import = import(text).unwrap();
    let noble = named(&import, "Image", "noble");
    assert_eq!(noble["spec"]["aws"]["imageId"], "ami-1");
    assert_eq!(noble["spec"]["gce"]["family"], "ubuntu-2404-lts", "one Image carries both clouds");
    assert_eq!(named(&import, "Image", "west-noble")["spec"]["aws"]["imageId"], "ami-2");
    let west = named(&import, "Provider", "west");
    assert_eq!(west["spec"]["pools"][0]["labels"][0]["image"], "west-noble");
    let gce = named(&import, "Provider", "gce");
    let label = &gce["spec"]["pools"][0]["labels"][0];
    assert_eq!(label["gce"]["metadata"]["ssh-keys"], "ubuntu:ssh-ed25519 AAAA");
    assert_eq!(
        (label["volumeSizeGb"].clone(), label["volumeType"].clone()),
        (json!(10), json!("pd-standard"))
    );
}

#[test]
fn kubernetes_labels_take_the_pools_defaults() {
    let text = "\
providers:
  - name: k8s
    driver: kubernetes
    context: admin@cluster
    pools:
      - name: main
        default-label-cpu: 2
        default-label-memory: 1024
        default-label-extra_resources: {licenses: 1}
        labels:
          - {name: ns, type: namespace}
          - name: pod
            type: pod
            image: debian:bookworm
            memory: 512
            env: [{name: A, value: b}]
            volumes: [{name: cache, emptyDir: {}}]
            volume-mounts: [{name: cache, mountPath: /cache}]
            extra-resources: {example.com/dongle: 2}
            gpu: 1
";
    let import = import(text).unwrap();
    let provider = named(&import, "Provider", "k8s");
    assert_eq!(provider["spec"]["kubernetes"]["context"], "admin@cluster");
    let labels = &provider["spec"]["pools"][0]["labels"];
    assert_eq!(labels[1]["kubernetes"]["cpu"], 2);
    assert_eq!(labels[1]["kubernetes"]["memory"], 512);
    assert_eq!(labels[1]["kubernetes"]["env"], json!([{"name": "A", "value": "b"}]));
    assert_eq!(labels[1]["kubernetes"]["volumes"], json!([{"name": "cache", "emptyDir": {}}]));
    assert_eq!(labels[0]["kubernetes"]["extraResources"], json!({"licenses": 1}), "the pool's default");
    assert_eq!(labels[1]["kubernetes"]["extraResources"], json!({"licenses": 1, "example.com/dongle": 2}));
    assert_eq!(labels[1]["kubernetes"]["volumeMounts"], json!([{"name": "cache", "mountPath": "/cache"}]));
    assert_eq!(notes_at(&import, "providers[0].pools[0].labels[1].gpu")[0].kind, NoteKind::NotCarried);
}

#[test]
fn bad_input_is_a_note_or_a_one_line_error_never_a_panic() {
    assert!(import("labels: [").is_err());
    for text in [
        "",
        "[]",
        "42",
        "labels: 3",
        "providers: [{name: x, driver: static, pools: {a: b}}]",
        "providers: [7]",
    ] {
        let import = import(text).unwrap();
        assert!(objects(&import, "Provider").is_empty(), "{text}");
    }
}

#[test]
fn nodepool_environment_variables_are_substituted_as_nodepool_does() {
    let environment = [("NODEPOOL_PORT".to_owned(), "8005".to_owned()), ("HOME".to_owned(), "/x".to_owned())];
    let text = super::substitute_env("port: %(NODEPOOL_PORT)\nhome: %(HOME)\n", environment);
    assert_eq!(text, "port: 8005\nhome: %(HOME)\n", "only NODEPOOL_ variables, as in Nodepool");
}

#[test]
fn openshift_projects_and_pods_with_max_projects_on_every_pool() {
    let text = "\
providers:
  - name: openshift
    driver: openshift
    context: self-provisioner
    max-projects: 4
    pools:
      - name: main
        labels:
          - name: openshift-project
            type: project
            python-path: /usr/bin/python3
          - name: openshift-pod
            type: pod
            image: docker.io/fedora:28
            cpu: 2
          - name: openshift-namespace
            type: namespace
";
    let import = import(text).unwrap();
    let provider = named(&import, "Provider", "openshift");
    assert_eq!(provider["spec"]["driver"], "openshift");
    assert_eq!(provider["spec"]["openshift"]["context"], "self-provisioner");
    let pool = &provider["spec"]["pools"][0];
    assert_eq!(pool["maxServers"], 4, "max-projects is every pool's max-servers, as in Nodepool");
    let labels = pool["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2, "namespace is no OpenShift label type: {labels:?}");
    assert_eq!(labels[0]["openshift"], json!({"type": "project", "pythonPath": "/usr/bin/python3"}));
    assert_eq!(labels[1]["openshift"], json!({"type": "pod", "image": "docker.io/fedora:28", "cpu": 2}));
    assert_eq!(notes_at(&import, "providers[0].pools[0].labels[2]")[0].kind, NoteKind::Invalid);
}

#[test]
fn openshift_pods_pools_name_their_projects_and_labels_are_pods() {
    let text = "\
providers:
  - name: openshift
    driver: openshiftpods
    context: service-account.local
    max-pods: 30
    pools:
      - name: main
        labels:
          - name: pod-fedora-secret
            image: docker.io/fedora:28
            image-pull-secrets:
              - name: registry-secret
          - name: pod-custom
            spec: {containers: []}
      - name: Not_A_Project
        labels: [{name: x, image: y}]
";
    let import = import(text).unwrap();
    let provider = named(&import, "Provider", "openshift");
    assert_eq!(provider["spec"]["driver"], "openshiftpods");
    assert_eq!(provider["spec"]["openshiftpods"]["context"], "service-account.local");
    let pools = provider["spec"]["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "a pool whose name is no namespace name is not carried: {pools:?}");
    assert_eq!((pools[0]["name"].clone(), pools[0]["maxServers"].clone()), (json!("main"), json!(30)));
    let label = &pools[0]["labels"][0]["openshiftpods"];
    assert_eq!(label["imagePullSecrets"], json!(["registry-secret"]));
    assert_eq!(pools[0]["labels"].as_array().unwrap().len(), 1, "a raw pod spec is not carried");
    assert_eq!(notes_at(&import, "providers[0].pools[1]")[0].kind, NoteKind::Invalid);
    assert_eq!(named(&import, "Secret", "openshift-credentials")["stringData"].as_object().unwrap().len(), 1);
}

#[test]
fn max_resources_are_carried_by_key_and_pools_take_the_providers_as_defaults() {
    let text = "\
tenant-resource-limits:
  - tenant-name: example
    max-servers: 10
    max-volumes: 4
    L-1216C47A: 64
providers:
  - name: ec2
    driver: aws
    region-name: us-east-1
    max-resources:
      L-1216C47A: 96
      L-34B43A08: 32
    cloud-images:
      - name: img
        image-id: ami-0123
    pools:
      - name: main
        max-resources:
          L-34B43A08: 16
        labels:
          - name: plain
            cloud-image: img
            instance-type: t3.small
      - name: other
        max-resources:
          L-1216C47A: not-a-number
        labels: []
";
    let import = import(text).unwrap();
    let provider = named(&import, "Provider", "ec2");
    let pools = &provider["spec"]["pools"];
    assert_eq!(pools[0]["maxResources"], json!({"L-1216C47A": 96, "L-34B43A08": 16}));
    assert_eq!(pools[1]["maxResources"], json!({"L-1216C47A": 96, "L-34B43A08": 32}));
    let kinds: Vec<_> =
        notes_at(&import, "providers[0].pools[1].max-resources.L-1216C47A").iter().map(|n| n.kind).collect();
    assert_eq!(kinds, [NoteKind::Invalid]);
    let limit = named(&import, "TenantLimit", "example");
    assert_eq!(limit["spec"]["maxServers"], 10);
    assert_eq!(limit["spec"]["maxResources"], json!({"volumes": 4, "L-1216C47A": 64}));
    assert!(notes_at(&import, "tenant-resource-limits[0].L-1216C47A").is_empty(), "carried, not noted");
}
