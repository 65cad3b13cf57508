"""The field schema of every kind, once: OpenAPI documents and unknown-field checks come from it.

Each kind of :data:`lbcore.model.kinds.ALL_KINDS` has an entry in :data:`KIND_SCHEMAS` naming its
definition, written in the API server's terms (definition names such as
``io.k8s.api.core.v1.Service``, field names, types, ``required``, the list semantics
``x-kubernetes-list-type`` and the strategic merge keys ``x-kubernetes-patch-merge-key``).
From these definitions come:

- the OpenAPI v2 (``/openapi/v2``) and v3 (``/openapi/v3/...``) documents the admin API serves,
  which kubectl reads to validate, to compute ``apply`` patches and to ``explain`` fields
  (:func:`openapi_v2`, :func:`openapi_v3`);
- the unknown-field check of ``fieldValidation`` (Strict, Warn, Ignore), which the admin API
  and :func:`lbcore.load_manifests` run on what they are given (:func:`unknown_fields`,
  :func:`drop_unknown_fields`).

Every field of these kinds is listed, down to the objects load balancing reads. A few deep
parts of a Pod that lbcore never reads (volumes, affinity, security contexts, resources,
lifecycle hooks, ...) are open objects (``x-kubernetes-preserve-unknown-fields``): their
own fields are kept as written and not checked, and ``kubectl explain`` shows them without
fields. A kind added to the registry only needs its entry here (a test requires one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbcore.model.kinds import ALL_KINDS, Kind, find_kind

__all__ = [
    "DEFINITIONS",
    "FIELD_VALIDATION",
    "KIND_SCHEMAS",
    "FieldProblem",
    "drop_unknown_fields",
    "group_versions",
    "openapi_v2",
    "openapi_v2_protobuf",
    "openapi_v3",
    "openapi_v3_index",
    "unknown_fields",
]


# -- the vocabulary of types ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scalar:
    type: str  # string, integer, boolean, number
    format: str | None = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ref:
    name: str  # a key of DEFINITIONS


@dataclass(frozen=True, slots=True)
class Array:
    items: Type
    list_type: str = "atomic"  # atomic, set, map
    map_keys: tuple[str, ...] = ()
    merge_key: str | None = None  # strategic merge patch
    strategy: str | None = None  # "merge", "merge,retainKeys"


@dataclass(frozen=True, slots=True)
class Map:
    values: Type
    map_type: str | None = None  # "atomic" for selectors


@dataclass(frozen=True, slots=True)
class Open:
    """An object whose fields are kept as written and not checked."""


Type = Scalar | Ref | Array | Map | Open


@dataclass(frozen=True, slots=True)
class Prop:
    type: Type
    description: str = ""


@dataclass(frozen=True, slots=True)
class Definition:
    description: str
    properties: Mapping[str, Prop] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    kind: str | None = None  # the kind whose top-level object this is
    atomic: bool = False  # x-kubernetes-map-type: atomic
    scalar: Scalar | None = None  # a named scalar (Time, IntOrString, Quantity)
    one_of: tuple[str, ...] = ()  # v3 only: the JSON types the scalar takes (IntOrString)


STRING = Scalar("string")
INT32 = Scalar("integer", "int32")
INT64 = Scalar("integer", "int64")
BOOL = Scalar("boolean")
STRINGS = Array(STRING)
LABELS = Map(STRING)
OPEN = Open()


def _p(t: Type, description: str = "") -> Prop:
    return Prop(t, description)


def _enum(*values: str) -> Scalar:
    return Scalar("string", enum=values)


_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_CORE = "io.k8s.api.core.v1."
_DISCOVERY = "io.k8s.api.discovery.v1."
TIME = Ref(_META + "Time")
MICRO_TIME = Ref(_META + "MicroTime")
INT_OR_STRING = Ref("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
QUANTITY = Ref("io.k8s.apimachinery.pkg.api.resource.Quantity")
OBJECT_REFERENCE = Ref(_CORE + "ObjectReference")

_API_VERSION = _p(STRING, "APIVersion defines the versioned schema of this representation of an "
                  "object. Servers should convert recognized schemas to the latest internal "
                  "value, and may reject unrecognized values.")
_KIND = _p(STRING, "Kind is a string value representing the REST resource this object "
           "represents. Servers may infer this from the endpoint the client submits requests "
           "to. Cannot be updated. In CamelCase.")
_METADATA = _p(Ref(_META + "ObjectMeta"), "Standard object's metadata.")
_PROTOCOL = _p(_enum("SCTP", "TCP", "UDP"), 'The IP protocol for this port: "TCP", "UDP" or '
               '"SCTP". Default is TCP.')
_APP_PROTOCOL = _p(STRING, "The application protocol for this port, a hint for implementations "
                   "to offer richer behavior for protocols they understand.")


def _top(description: str, kind: str, spec: str | None = None, status: str | None = None,
         **more: Prop) -> Definition:
    props = {"apiVersion": _API_VERSION, "kind": _KIND, "metadata": _METADATA}
    if spec:
        props["spec"] = _p(Ref(spec), "Spec defines the behavior of the object.")
    if status:
        props["status"] = _p(Ref(status), "Most recently observed status of the object. "
                             "Populated by the system. Read-only.")
    props.update(more)
    return Definition(description, dict(sorted(props.items())), kind=kind)


def _struct(description: str, required: tuple[str, ...] = (), atomic: bool = False,
            **props: Prop) -> Definition:
    return Definition(description, dict(sorted(props.items())), required, atomic=atomic)


def _open_struct(description: str) -> Definition:
    """A definition whose fields lbcore does not check (see the module's docstring)."""
    return Definition(description, {})


# -- apimachinery -------------------------------------------------------------------------------

_APIMACHINERY: dict[str, Definition] = {
    _META + "Time": Definition(
        "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON, "
        "in RFC 3339 form.", scalar=Scalar("string", "date-time")),
    _META + "MicroTime": Definition(
        "MicroTime is version of Time with microsecond level precision.",
        scalar=Scalar("string", "date-time")),
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": Definition(
        "IntOrString is a type that can hold an int32 or a string.",
        scalar=Scalar("string", "int-or-string"), one_of=("integer", "string")),
    "io.k8s.apimachinery.pkg.api.resource.Quantity": Definition(
        "Quantity is a fixed-point representation of a number, such as 100m or 128Mi.",
        scalar=Scalar("string"), one_of=("string", "number")),
    _META + "FieldsV1": _open_struct(
        "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON format."),
    _META + "ObjectMeta": _struct(
        "ObjectMeta is metadata that all persisted resources must have, which includes all "
        "objects users must create.",
        annotations=_p(LABELS, "Annotations is an unstructured key value map stored with a "
                       "resource that may be set by external tools to store and retrieve "
                       "arbitrary metadata."),
        creationTimestamp=_p(TIME, "CreationTimestamp is a timestamp representing the server "
                             "time when this object was created. Read-only."),
        deletionGracePeriodSeconds=_p(INT64, "Number of seconds allowed for this object to "
                                      "gracefully terminate before it will be removed."),
        deletionTimestamp=_p(TIME, "DeletionTimestamp is RFC 3339 date and time at which this "
                             "resource will be deleted. Read-only."),
        finalizers=_p(Array(STRING, "set", merge_key=None, strategy="merge"),
                      "Must be empty before the object is deleted from the registry."),
        generateName=_p(STRING, "An optional prefix, used by the server, to generate a unique "
                        "name only if the Name field has not been provided."),
        generation=_p(INT64, "A sequence number representing a specific generation of the "
                      "desired state. Read-only."),
        labels=_p(LABELS, "Map of string keys and values that can be used to organize and "
                  "categorize (scope and select) objects."),
        managedFields=_p(Array(Ref(_META + "ManagedFieldsEntry")), "ManagedFields maps "
                         "workflow-id and version to the set of fields that are managed by "
                         "that workflow."),
        name=_p(STRING, "Name must be unique within a namespace. Cannot be updated."),
        namespace=_p(STRING, "Namespace defines the space within which each name must be "
                     "unique. Cannot be updated."),
        ownerReferences=_p(Array(Ref(_META + "OwnerReference"), "map", ("uid",), "uid",
                                 "merge"), "List of objects depended by this object."),
        resourceVersion=_p(STRING, "An opaque value that represents the internal version of "
                           "this object, used for optimistic concurrency and watches. "
                           "Read-only."),
        selfLink=_p(STRING, "Deprecated: selfLink is a legacy read-only field that is no "
                    "longer populated by the system."),
        uid=_p(STRING, "UID is the unique in time and space value for this object. "
               "Read-only."),
    ),
    _META + "ManagedFieldsEntry": _struct(
        "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the resource "
        "that the fieldset applies to.",
        apiVersion=_p(STRING, "The version of this resource that this field set applies to."),
        fieldsType=_p(STRING, 'The discriminator for the format of the fields: "FieldsV1".'),
        fieldsV1=_p(Ref(_META + "FieldsV1"), "The set of fields, in FieldsV1 form."),
        manager=_p(STRING, "An identifier of the workflow managing these fields."),
        operation=_p(STRING, "The type of operation which lead to this entry: Apply or Update."),
        subresource=_p(STRING, "The name of the subresource used to update that object."),
        time=_p(TIME, "The timestamp of when the ManagedFields entry was added."),
    ),
    _META + "OwnerReference": _struct(
        "OwnerReference contains enough information to let you identify an owning object.",
        ("apiVersion", "kind", "name", "uid"), atomic=True,
        apiVersion=_p(STRING, "API version of the referent."),
        blockOwnerDeletion=_p(BOOL, "If true, the owner cannot be deleted from the key-value "
                              "store until this reference is removed."),
        controller=_p(BOOL, "If true, this reference points to the managing controller."),
        kind=_p(STRING, "Kind of the referent."),
        name=_p(STRING, "Name of the referent."),
        uid=_p(STRING, "UID of the referent."),
    ),
    _META + "ListMeta": Definition(
        "ListMeta describes metadata that synthetic resources must have, including lists.", {
            "continue": _p(STRING, "Set when the list is limited; a token to read the rest."),
            "remainingItemCount": _p(INT64, "The number of items not included in this list."),
            "resourceVersion": _p(STRING, "The version of the list, from which a watch can "
                                  "start."),
            "selfLink": _p(STRING, "Deprecated: no longer populated by the system."),
        }),
    _META + "Condition": _struct(
        "Condition contains details for one aspect of the current state of this API Resource.",
        ("lastTransitionTime", "message", "reason", "status", "type"),
        lastTransitionTime=_p(TIME, "The last time the condition transitioned."),
        message=_p(STRING, "A human readable message about the transition."),
        observedGeneration=_p(INT64, "The .metadata.generation the condition was set from."),
        reason=_p(STRING, "A programmatic identifier of the reason for the last transition."),
        status=_p(_enum("False", "True", "Unknown"), "Status of the condition."),
        type=_p(STRING, "Type of condition in CamelCase."),
    ),
}

# -- core/v1 Service ----------------------------------------------------------------------------

_SERVICE: dict[str, Definition] = {
    _CORE + "Service": _top(
        "Service is a named abstraction of software service (for example, mysql) consisting of "
        "local port (for example 3306) that the proxy listens on, and the selector that "
        "determines which pods will answer requests sent through the proxy.",
        "Service", _CORE + "ServiceSpec", _CORE + "ServiceStatus"),
    _CORE + "ServiceSpec": _struct(
        "ServiceSpec describes the attributes that a user creates on a service.",
        allocateLoadBalancerNodePorts=_p(BOOL, "Whether NodePorts will be automatically "
                                         "allocated for services with type LoadBalancer."),
        clusterIP=_p(STRING, 'The IP address of the service, usually assigned randomly. "None" '
                     "makes a headless service."),
        clusterIPs=_p(STRINGS, "The IP addresses assigned to this service, one per family."),
        externalIPs=_p(STRINGS, "IP addresses for which nodes in the cluster will also accept "
                       "traffic for this service."),
        externalName=_p(STRING, "The external reference that discovery mechanisms will return "
                        "as an alias for this service (a CNAME record). Requires type "
                        "ExternalName."),
        externalTrafficPolicy=_p(_enum("Cluster", "Local"), "How nodes distribute service "
                                 "traffic they receive on externally-facing addresses."),
        healthCheckNodePort=_p(INT32, "The healthcheck nodePort for the service."),
        internalTrafficPolicy=_p(_enum("Cluster", "Local"), "How nodes distribute service "
                                 "traffic they receive on the ClusterIP."),
        ipFamilies=_p(STRINGS, "A list of IP families (IPv4, IPv6) assigned to this service."),
        ipFamilyPolicy=_p(_enum("PreferDualStack", "RequireDualStack", "SingleStack"),
                          "The dual-stack-ness requested or required by this Service."),
        loadBalancerClass=_p(STRING, "The class of the load balancer implementation this "
                             "Service belongs to."),
        loadBalancerIP=_p(STRING, "Deprecated: only applies to type LoadBalancer."),
        loadBalancerSourceRanges=_p(STRINGS, "Client IP ranges allowed to reach a "
                                    "load-balancer."),
        ports=_p(Array(Ref(_CORE + "ServicePort"), "map", ("port", "protocol"), "port",
                       "merge"), "The list of ports that are exposed by this service."),
        publishNotReadyAddresses=_p(BOOL, "Endpoints of this service are published whether or "
                                    "not their pods are ready."),
        selector=_p(Map(STRING, "atomic"), "Route service traffic to pods with label keys and "
                    "values matching this selector."),
        sessionAffinity=_p(_enum("ClientIP", "None"), 'Supports "ClientIP" and "None". Used to '
                           "maintain session affinity."),
        sessionAffinityConfig=_p(Ref(_CORE + "SessionAffinityConfig"), "The configurations "
                                 "of session affinity."),
        trafficDistribution=_p(STRING, "How traffic is distributed to Service endpoints."),
        type=_p(_enum("ClusterIP", "ExternalName", "LoadBalancer", "NodePort"), "How the "
                "Service is exposed. Defaults to ClusterIP."),
    ),
    _CORE + "ServicePort": _struct(
        "ServicePort contains information on service's port.", ("port",),
        appProtocol=_APP_PROTOCOL,
        name=_p(STRING, "The name of this port within the service. Must be a DNS_LABEL and "
                "unique within the ServiceSpec; optional with a single port."),
        nodePort=_p(INT32, "The port on each node on which this service is exposed when type "
                    "is NodePort or LoadBalancer. Usually assigned by the system."),
        port=_p(INT32, "The port that will be exposed by this service."),
        protocol=_PROTOCOL,
        targetPort=_p(INT_OR_STRING, "Number or name of the port to access on the pods "
                      "targeted by the service. Defaults to the value of the 'port' field."),
    ),
    _CORE + "SessionAffinityConfig": _struct(
        "SessionAffinityConfig represents the configurations of session affinity.",
        clientIP=_p(Ref(_CORE + "ClientIPConfig"), "The configurations of ClientIP based "
                    "session affinity."),
    ),
    _CORE + "ClientIPConfig": _struct(
        "ClientIPConfig represents the configurations of Client IP based session affinity.",
        timeoutSeconds=_p(INT32, 'The seconds of "ClientIP" type session sticky time, '
                          "0 < value <= 86400. Default 10800 (3 hours)."),
    ),
    _CORE + "ServiceStatus": _struct(
        "ServiceStatus represents the current status of a service.",
        conditions=_p(Array(Ref(_META + "Condition"), "map", ("type",), "type", "merge"),
                      "Current service state."),
        loadBalancer=_p(Ref(_CORE + "LoadBalancerStatus"), "The current status of the "
                        "load-balancer, if one is present."),
    ),
    _CORE + "LoadBalancerStatus": _struct(
        "LoadBalancerStatus represents the status of a load-balancer.",
        ingress=_p(Array(Ref(_CORE + "LoadBalancerIngress")), "Ingress points for the "
                   "load-balancer."),
    ),
    _CORE + "LoadBalancerIngress": _struct(
        "LoadBalancerIngress represents the status of a load-balancer ingress point.",
        hostname=_p(STRING, "Set for load-balancer ingress points that are DNS based."),
        ip=_p(STRING, "Set for load-balancer ingress points that are IP based."),
        ipMode=_p(_enum("Proxy", "VIP"), "How the load-balancer IP behaves."),
        ports=_p(Array(Ref(_CORE + "PortStatus")), "Records of the service ports."),
    ),
    _CORE + "PortStatus": _struct(
        "PortStatus represents the error condition of a service port.", ("port", "protocol"),
        error=_p(STRING, "Records a problem with the service port, in CamelCase."),
        port=_p(INT32, "The port number of the service port of which status is recorded."),
        protocol=_PROTOCOL,
    ),
}


# -- core/v1 Endpoints, discovery.k8s.io/v1 EndpointSlice --------------------------------------

_ENDPOINTS: dict[str, Definition] = {
    _CORE + "Endpoints": _top(
        "Endpoints is a collection of endpoints that implement the actual service.",
        "Endpoints",
        subsets=_p(Array(Ref(_CORE + "EndpointSubset")), "The set of all endpoints is the "
                   "union of all subsets."),
    ),
    _CORE + "EndpointSubset": _struct(
        "EndpointSubset is a group of addresses with a common set of ports.",
        addresses=_p(Array(Ref(_CORE + "EndpointAddress")), "IP addresses which offer the "
                     "related ports that are marked as ready."),
        notReadyAddresses=_p(Array(Ref(_CORE + "EndpointAddress")), "IP addresses which "
                             "offer the related ports but are not currently marked as ready."),
        ports=_p(Array(Ref(_CORE + "EndpointPort")), "Port numbers available on the related "
                 "IP addresses."),
    ),
    _CORE + "EndpointAddress": _struct(
        "EndpointAddress is a tuple that describes single IP address.", ("ip",), atomic=True,
        hostname=_p(STRING, "The Hostname of this endpoint."),
        ip=_p(STRING, "The IP of this endpoint."),
        nodeName=_p(STRING, "The node hosting this endpoint."),
        targetRef=_p(OBJECT_REFERENCE, "Reference to object providing the endpoint."),
    ),
    _CORE + "EndpointPort": _struct(
        "EndpointPort is a tuple that describes a single port.", ("port",), atomic=True,
        appProtocol=_APP_PROTOCOL,
        name=_p(STRING, "The name of this port; must match the name of the ServicePort."),
        port=_p(INT32, "The port number of the endpoint."),
        protocol=_PROTOCOL,
    ),
    _CORE + "ObjectReference": _struct(
        "ObjectReference contains enough information to let you inspect or modify the "
        "referred object.", atomic=True,
        apiVersion=_p(STRING, "API version of the referent."),
        fieldPath=_p(STRING, "If referring to a piece of an object instead of an entire "
                     "object, the path of that piece."),
        kind=_p(STRING, "Kind of the referent."),
        name=_p(STRING, "Name of the referent."),
        namespace=_p(STRING, "Namespace of the referent."),
        resourceVersion=_p(STRING, "Specific resourceVersion to which this reference is made."),
        uid=_p(STRING, "UID of the referent."),
    ),
    _DISCOVERY + "EndpointSlice": _top(
        "EndpointSlice represents a subset of the endpoints that implement a service.",
        "EndpointSlice",
        addressType=_p(_enum("FQDN", "IPv4", "IPv6"), "The type of address carried by this "
                       "EndpointSlice."),
        endpoints=_p(Array(Ref(_DISCOVERY + "Endpoint")), "A list of unique endpoints in this "
                     "slice, at most 1000."),
        ports=_p(Array(Ref(_DISCOVERY + "EndpointPort")), "The network ports exposed by each "
                 "endpoint in this slice."),
    ),
    _DISCOVERY + "Endpoint": _struct(
        "Endpoint represents a single logical backend implementing a service.", ("addresses",),
        addresses=_p(Array(STRING, "set"), "Addresses of this endpoint, of the slice's "
                     "addressType."),
        conditions=_p(Ref(_DISCOVERY + "EndpointConditions"), "The current state of the "
                      "endpoint."),
        deprecatedTopology=_p(LABELS, "Deprecated topology information."),
        hints=_p(Ref(_DISCOVERY + "EndpointHints"), "Information about how the endpoint "
                 "should be consumed."),
        hostname=_p(STRING, "The hostname of this endpoint."),
        nodeName=_p(STRING, "The name of the Node hosting this endpoint."),
        targetRef=_p(OBJECT_REFERENCE, "A reference to a Kubernetes object that represents "
                     "this endpoint."),
        zone=_p(STRING, "The name of the Zone this endpoint exists in."),
    ),
    _DISCOVERY + "EndpointConditions": _struct(
        "EndpointConditions represents the current condition of an endpoint.",
        ready=_p(BOOL, "The endpoint is ready to receive traffic."),
        serving=_p(BOOL, "Like ready, but also true for terminating endpoints that still "
                   "serve."),
        terminating=_p(BOOL, "The endpoint is terminating."),
    ),
    _DISCOVERY + "EndpointHints": _struct(
        "EndpointHints provides hints describing how an endpoint should be consumed.",
        forZones=_p(Array(Ref(_DISCOVERY + "ForZone")), "The zone(s) this endpoint should be "
                    "consumed by."),
    ),
    _DISCOVERY + "ForZone": _struct(
        "ForZone provides information about which zones should consume this endpoint.",
        ("name",), name=_p(STRING, "The name of the zone."),
    ),
    _DISCOVERY + "EndpointPort": _struct(
        "EndpointPort represents a Port used by an EndpointSlice.", atomic=True,
        appProtocol=_APP_PROTOCOL,
        name=_p(STRING, "The name of this port; must match the name of the ServicePort."),
        port=_p(INT32, "The port number of the endpoint."),
        protocol=_PROTOCOL,
    ),
}


# -- core/v1 Pod --------------------------------------------------------------------------------


def _named(ref: str) -> Array:
    return Array(Ref(ref), "map", ("name",), "name", "merge")


_OPEN_NOTE = " (an open object: its fields are not checked)"

_POD: dict[str, Definition] = {
    _CORE + "Pod": _top(
        "Pod is a collection of containers that can run on a host.",
        "Pod", _CORE + "PodSpec", _CORE + "PodStatus"),
    _CORE + "PodSpec": _struct(
        "PodSpec is a description of a pod.", ("containers",),
        activeDeadlineSeconds=_p(INT64, "Duration in seconds the pod may be active on the "
                                 "node before the system actively tries to mark it failed."),
        affinity=_p(OPEN, "If specified, the pod's scheduling constraints" + _OPEN_NOTE + "."),
        automountServiceAccountToken=_p(BOOL, "Whether a service account token should be "
                                        "automatically mounted."),
        containers=_p(_named(_CORE + "Container"), "List of containers belonging to the pod."),
        dnsConfig=_p(OPEN, "DNS parameters of a pod" + _OPEN_NOTE + "."),
        dnsPolicy=_p(STRING, "DNS policy for the pod. Defaults to ClusterFirst."),
        enableServiceLinks=_p(BOOL, "Whether information about services should be injected "
                              "into the pod's environment variables."),
        ephemeralContainers=_p(Array(OPEN, "map", ("name",), "name", "merge"),
                               "Ephemeral containers run in this pod" + _OPEN_NOTE + "."),
        hostAliases=_p(Array(OPEN, "map", ("ip",), "ip", "merge"), "Hosts file entries"
                       + _OPEN_NOTE + "."),
        hostIPC=_p(BOOL, "Use the host's ipc namespace."),
        hostNetwork=_p(BOOL, "Host networking requested for this pod."),
        hostPID=_p(BOOL, "Use the host's pid namespace."),
        hostUsers=_p(BOOL, "Use the host's user namespace."),
        hostname=_p(STRING, "The hostname of the Pod."),
        imagePullSecrets=_p(_named(_CORE + "LocalObjectReference"), "References to secrets "
                            "for pulling the images."),
        initContainers=_p(_named(_CORE + "Container"), "List of initialization containers."),
        nodeName=_p(STRING, "The node the pod is scheduled onto."),
        nodeSelector=_p(Map(STRING, "atomic"), "A selector which must match a node's labels "
                        "for the pod to be scheduled on that node."),
        os=_p(OPEN, "The OS of the containers in the pod" + _OPEN_NOTE + "."),
        overhead=_p(Map(QUANTITY), "The resource overhead of running the pod."),
        preemptionPolicy=_p(STRING, "Policy for preempting pods with lower priority."),
        priority=_p(INT32, "The priority value."),
        priorityClassName=_p(STRING, "The pod's priority class."),
        readinessGates=_p(Array(OPEN), "Pod readiness gates" + _OPEN_NOTE + "."),
        resourceClaims=_p(Array(OPEN, "map", ("name",), "name", "merge,retainKeys"),
                          "Resource claims" + _OPEN_NOTE + "."),
        resources=_p(OPEN, "Total resources of the pod" + _OPEN_NOTE + "."),
        restartPolicy=_p(_enum("Always", "Never", "OnFailure"), "Restart policy for all "
                         "containers within the pod."),
        runtimeClassName=_p(STRING, "The RuntimeClass to run this pod with."),
        schedulerName=_p(STRING, "The scheduler that dispatches the pod."),
        schedulingGates=_p(Array(OPEN, "map", ("name",), "name", "merge"),
                           "Gates that block scheduling" + _OPEN_NOTE + "."),
        securityContext=_p(OPEN, "Pod-level security attributes" + _OPEN_NOTE + "."),
        serviceAccount=_p(STRING, "Deprecated alias for serviceAccountName."),
        serviceAccountName=_p(STRING, "The name of the ServiceAccount to run this pod with."),
        setHostnameAsFQDN=_p(BOOL, "Set the pod's hostname to its fully qualified name."),
        shareProcessNamespace=_p(BOOL, "Share a single process namespace between all of the "
                                 "containers in a pod."),
        subdomain=_p(STRING, "The subdomain of the pod's hostname."),
        terminationGracePeriodSeconds=_p(INT64, "Duration in seconds the pod needs to "
                                         "terminate gracefully."),
        tolerations=_p(Array(OPEN), "The pod's tolerations" + _OPEN_NOTE + "."),
        topologySpreadConstraints=_p(
            Array(OPEN, "map", ("topologyKey", "whenUnsatisfiable"), "topologyKey", "merge"),
            "How a group of pods spread across topology domains" + _OPEN_NOTE + "."),
        volumes=_p(Array(OPEN, "map", ("name",), "name", "merge,retainKeys"),
                   "Volumes that can be mounted by containers" + _OPEN_NOTE + "."),
    ),
    _CORE + "Container": _struct(
        "A single application container that you want to run within a pod.", ("name",),
        args=_p(STRINGS, "Arguments to the entrypoint."),
        command=_p(STRINGS, "Entrypoint array. Not executed within a shell."),
        env=_p(_named(_CORE + "EnvVar"), "Environment variables to set in the container."),
        envFrom=_p(Array(OPEN), "Sources to populate environment variables" + _OPEN_NOTE
                   + "."),
        image=_p(STRING, "Container image name."),
        imagePullPolicy=_p(_enum("Always", "IfNotPresent", "Never"), "Image pull policy."),
        lifecycle=_p(OPEN, "Actions taken on container lifecycle events" + _OPEN_NOTE + "."),
        livenessProbe=_p(Ref(_CORE + "Probe"), "Periodic probe of container liveness."),
        name=_p(STRING, "Name of the container specified as a DNS_LABEL."),
        ports=_p(Array(Ref(_CORE + "ContainerPort"), "map", ("containerPort", "protocol"),
                       "containerPort", "merge"), "List of ports to expose from the "
                 "container."),
        readinessProbe=_p(Ref(_CORE + "Probe"), "Periodic probe of container service "
                          "readiness."),
        resizePolicy=_p(Array(OPEN), "Resources resize policy" + _OPEN_NOTE + "."),
        resources=_p(OPEN, "Compute resources required by this container" + _OPEN_NOTE + "."),
        restartPolicy=_p(STRING, "The restart behavior of an init container."),
        securityContext=_p(OPEN, "Security options the container should run with"
                           + _OPEN_NOTE + "."),
        startupProbe=_p(Ref(_CORE + "Probe"), "Probe that the Pod has successfully "
                        "initialized."),
        stdin=_p(BOOL, "Allocate a buffer for stdin in the container runtime."),
        stdinOnce=_p(BOOL, "Close the stdin channel after it has been opened by a single "
                     "attach."),
        terminationMessagePath=_p(STRING, "File to which the termination message is "
                                  "written."),
        terminationMessagePolicy=_p(_enum("FallbackToLogsOnError", "File"), "How the "
                                    "termination message should be populated."),
        tty=_p(BOOL, "Allocate a TTY for the container."),
        volumeDevices=_p(Array(OPEN, "atomic", (), "devicePath", "merge"), "Block devices to "
                         "be used by the container" + _OPEN_NOTE + "."),
        volumeMounts=_p(Array(OPEN, "atomic", (), "mountPath", "merge"), "Pod volumes to "
                        "mount into the container's filesystem" + _OPEN_NOTE + "."),
        workingDir=_p(STRING, "Container's working directory."),
    ),
    _CORE + "ContainerPort": _struct(
        "ContainerPort represents a network port in a single container.", ("containerPort",),
        containerPort=_p(INT32, "Number of port to expose on the pod's IP address."),
        hostIP=_p(STRING, "What host IP to bind the external port to."),
        hostPort=_p(INT32, "Number of port to expose on the host."),
        name=_p(STRING, "An IANA_SVC_NAME, unique within the pod, that services can refer "
                "to."),
        protocol=_PROTOCOL,
    ),
    _CORE + "EnvVar": _struct(
        "EnvVar represents an environment variable present in a Container.", ("name",),
        name=_p(STRING, "Name of the environment variable."),
        value=_p(STRING, "The variable's value."),
        valueFrom=_p(OPEN, "Source for the environment variable's value" + _OPEN_NOTE + "."),
    ),
    _CORE + "LocalObjectReference": _struct(
        "LocalObjectReference contains enough information to let you locate the referenced "
        "object inside the same namespace.", atomic=True,
        name=_p(STRING, "Name of the referent."),
    ),
    _CORE + "Probe": _struct(
        "Probe describes a health check to be performed against a container to determine "
        "whether it is alive or ready to receive traffic.",
        exec=_p(OPEN, "A command to run" + _OPEN_NOTE + "."),
        failureThreshold=_p(INT32, "Minimum consecutive failures for the probe to be "
                            "considered failed after having succeeded. Defaults to 3."),
        grpc=_p(OPEN, "A GRPC port to probe" + _OPEN_NOTE + "."),
        httpGet=_p(Ref(_CORE + "HTTPGetAction"), "The http request to perform."),
        initialDelaySeconds=_p(INT32, "Seconds after the container has started before "
                               "probes are initiated."),
        periodSeconds=_p(INT32, "How often (in seconds) to perform the probe. Default to 10 "
                         "seconds."),
        successThreshold=_p(INT32, "Minimum consecutive successes for the probe to be "
                            "considered successful after having failed. Defaults to 1."),
        tcpSocket=_p(Ref(_CORE + "TCPSocketAction"), "A TCP port to connect to."),
        terminationGracePeriodSeconds=_p(INT64, "Duration the pod needs to terminate "
                                         "gracefully upon probe failure."),
        timeoutSeconds=_p(INT32, "Seconds after which the probe times out. Defaults to 1 "
                          "second."),
    ),
    _CORE + "HTTPGetAction": _struct(
        "HTTPGetAction describes an action based on HTTP Get requests.", ("port",),
        host=_p(STRING, "Host name to connect to, defaults to the pod IP."),
        httpHeaders=_p(Array(OPEN), "Custom headers to set in the request" + _OPEN_NOTE
                       + "."),
        path=_p(STRING, "Path to access on the HTTP server."),
        port=_p(INT_OR_STRING, "Name or number of the port to access on the container."),
        scheme=_p(_enum("HTTP", "HTTPS"), "Scheme to use for connecting to the host. "
                  "Defaults to HTTP."),
    ),
    _CORE + "TCPSocketAction": _struct(
        "TCPSocketAction describes an action based on opening a socket.", ("port",),
        host=_p(STRING, "Optional: Host name to connect to, defaults to the pod IP."),
        port=_p(INT_OR_STRING, "Number or name of the port to access on the container."),
    ),
    _CORE + "PodStatus": _struct(
        "PodStatus represents information about the status of a pod.",
        conditions=_p(Array(Ref(_CORE + "PodCondition"), "map", ("type",), "type", "merge"),
                      "Current service state of pod."),
        containerStatuses=_p(Array(Ref(_CORE + "ContainerStatus")), "The status of each "
                             "container in the manifest."),
        ephemeralContainerStatuses=_p(Array(Ref(_CORE + "ContainerStatus")), "Status of "
                                      "any ephemeral containers that have run in this pod."),
        hostIP=_p(STRING, "The IP address of the host to which the pod is assigned."),
        hostIPs=_p(Array(Ref(_CORE + "HostIP"), "atomic", (), "ip", "merge"), "The IP "
                   "addresses allocated to the host."),
        initContainerStatuses=_p(Array(Ref(_CORE + "ContainerStatus")), "The status of each "
                                 "init container."),
        message=_p(STRING, "A human readable message indicating details about why the pod "
                   "is in this condition."),
        nominatedNodeName=_p(STRING, "Set when this pod preempts other pods on a node."),
        phase=_p(_enum("Failed", "Pending", "Running", "Succeeded", "Unknown"), "A simple, "
                 "high-level summary of where the Pod is in its lifecycle."),
        podIP=_p(STRING, "The IP address allocated to the pod."),
        podIPs=_p(Array(Ref(_CORE + "PodIP"), "map", ("ip",), "ip", "merge"), "The IP "
                  "addresses allocated to the pod, one per family."),
        qosClass=_p(STRING, "The Quality of Service class assigned to the pod."),
        reason=_p(STRING, "A brief CamelCase message indicating why the pod is in this "
                  "state."),
        resize=_p(STRING, "Status of resources resize desired for pod's containers."),
        resourceClaimStatuses=_p(Array(OPEN), "Status of resource claims" + _OPEN_NOTE + "."),
        startTime=_p(TIME, "When the object was acknowledged by the Kubelet."),
    ),
    _CORE + "PodCondition": _struct(
        "PodCondition contains details for the current condition of this pod.",
        ("status", "type"),
        lastProbeTime=_p(TIME, "Last time we probed the condition."),
        lastTransitionTime=_p(TIME, "Last time the condition transitioned."),
        message=_p(STRING, "Human-readable message about the last transition."),
        reason=_p(STRING, "Unique, one-word, CamelCase reason for the last transition."),
        status=_p(STRING, "Status is the status of the condition: True, False or Unknown."),
        type=_p(STRING, "Type is the type of the condition, such as Ready."),
    ),
    _CORE + "PodIP": _struct("PodIP represents a single IP address allocated to the pod.",
                             ("ip",), ip=_p(STRING, "The IP address.")),
    _CORE + "HostIP": _struct("HostIP represents a single IP address allocated to the host.",
                              ("ip",), ip=_p(STRING, "The IP address.")),
    _CORE + "ContainerStatus": _struct(
        "ContainerStatus contains details for the current status of this container.",
        ("image", "imageID", "name", "ready", "restartCount"),
        allocatedResources=_p(Map(QUANTITY), "Compute resources allocated for this "
                              "container by the node."),
        allocatedResourcesStatus=_p(Array(OPEN), "Status of allocated resources"
                                    + _OPEN_NOTE + "."),
        containerID=_p(STRING, "The ID of the container, as <type>://<container_id>."),
        image=_p(STRING, "The name of the container image the container is running."),
        imageID=_p(STRING, "The image ID of the container's image."),
        lastState=_p(OPEN, "The container's last termination condition" + _OPEN_NOTE + "."),
        name=_p(STRING, "The name of the container, as in the pod's spec."),
        ready=_p(BOOL, "Whether the container is currently passing its readiness check."),
        resources=_p(OPEN, "The compute resource requests and limits applied"
                     + _OPEN_NOTE + "."),
        restartCount=_p(INT32, "The number of times the container has been restarted."),
        started=_p(BOOL, "Whether the container has finished its postStart hook and passed "
                   "its startup probe."),
        state=_p(OPEN, "The container's current condition" + _OPEN_NOTE + "."),
        user=_p(OPEN, "The user identity of the container's first process" + _OPEN_NOTE
                + "."),
        volumeMounts=_p(Array(OPEN), "Status of volume mounts" + _OPEN_NOTE + "."),
    ),
}


# -- core/v1 Namespace and Event ----------------------------------------------------------------

_NAMESPACE_EVENT: dict[str, Definition] = {
    _CORE + "Namespace": _top(
        "Namespace provides a scope for Names. Use of multiple namespaces is optional.",
        "Namespace", _CORE + "NamespaceSpec", _CORE + "NamespaceStatus"),
    _CORE + "NamespaceSpec": _struct(
        "NamespaceSpec describes the attributes on a Namespace.",
        finalizers=_p(STRINGS, "Finalizers is an opaque list of values that must be empty "
                      "to permanently remove the object from storage."),
    ),
    _CORE + "NamespaceStatus": _struct(
        "NamespaceStatus is information about the current status of a Namespace.",
        conditions=_p(Array(Ref(_CORE + "NamespaceCondition"), "map", ("type",), "type",
                            "merge"), "The latest available observations of a namespace's "
                      "current state."),
        phase=_p(_enum("Active", "Terminating"), "The current lifecycle phase of the "
                 "namespace."),
    ),
    _CORE + "NamespaceCondition": _struct(
        "NamespaceCondition contains details about state of namespace.", ("status", "type"),
        lastTransitionTime=_p(TIME, "Last time the condition transitioned."),
        message=_p(STRING, "Human-readable message about the last transition."),
        reason=_p(STRING, "Unique, one-word, CamelCase reason for the last transition."),
        status=_p(STRING, "Status of the condition, one of True, False, Unknown."),
        type=_p(STRING, "Type of namespace controller condition."),
    ),
    _CORE + "Event": Definition(
        "Event is a report of an event somewhere in the cluster.",
        dict(sorted({
            "action": _p(STRING, "What action was taken/failed regarding to the Regarding "
                         "object."),
            "apiVersion": _API_VERSION,
            "count": _p(INT32, "The number of times this event has occurred."),
            "eventTime": _p(MICRO_TIME, "Time when this Event was first observed."),
            "firstTimestamp": _p(TIME, "The time at which the event was first recorded."),
            "involvedObject": _p(OBJECT_REFERENCE, "The object that this event is about."),
            "kind": _KIND,
            "lastTimestamp": _p(TIME, "The time at which the most recent occurrence of this "
                                "event was recorded."),
            "message": _p(STRING, "A human-readable description of the status of this "
                          "operation."),
            "metadata": _METADATA,
            "reason": _p(STRING, "A short, machine understandable string that gives the "
                         "reason for the transition into the object's current status."),
            "related": _p(OBJECT_REFERENCE, "Optional secondary object for more complex "
                          "actions."),
            "reportingComponent": _p(STRING, "Name of the controller that emitted this "
                                     "Event."),
            "reportingInstance": _p(STRING, "ID of the controller instance."),
            "series": _p(Ref(_CORE + "EventSeries"), "Data about the Event series this "
                         "event represents."),
            "source": _p(Ref(_CORE + "EventSource"), "The component reporting this event."),
            "type": _p(STRING, "Type of this event (Normal, Warning)."),
        }.items())),
        ("involvedObject", "metadata"), kind="Event"),
    _CORE + "EventSeries": _struct(
        "EventSeries contain information on series of events.",
        count=_p(INT32, "Number of occurrences in this series up to the last heartbeat "
                 "time."),
        lastObservedTime=_p(MICRO_TIME, "Time of the last occurrence observed."),
    ),
    _CORE + "EventSource": _struct(
        "EventSource contains information for an event.",
        component=_p(STRING, "Component from which the event is generated."),
        host=_p(STRING, "Node name on which the event is generated."),
    ),
}


# -- core/v1 Secret, networking.k8s.io/v1 Ingress, route.openshift.io/v1 Route -----------------

_NETWORKING = "io.k8s.api.networking.v1."
_ROUTE = "com.github.openshift.api.route.v1."

_SECRET_INGRESS_ROUTE: dict[str, Definition] = {
    _CORE + "Secret": _top(
        "Secret holds secret data of a certain type. The total bytes of the values in the Data "
        "field must be less than MaxSecretSize bytes.", "Secret",
        data=_p(Map(Scalar("string", "byte")), "Data contains the secret data, each value "
                "base64 encoded. Keys must consist of alphanumeric characters, '-', '_' or '.'."),
        immutable=_p(BOOL, "Immutable, if set to true, ensures that data stored in the Secret "
                     "cannot be updated."),
        stringData=_p(LABELS, "stringData allows specifying non-binary secret data in string "
                      "form; it is merged into the data field on write."),
        type=_p(STRING, "Used to facilitate programmatic handling of secret data, such as "
                "kubernetes.io/tls (keys tls.crt and tls.key)."),
    ),
    _NETWORKING + "Ingress": _top(
        "Ingress is a collection of rules that allow inbound connections to reach the "
        "endpoints defined by a backend.", "Ingress", _NETWORKING + "IngressSpec",
        _NETWORKING + "IngressStatus"),
    _NETWORKING + "IngressClass": _top(
        "IngressClass represents the class of the Ingress, referenced by the Ingress Spec. "
        "The ingressclass.kubernetes.io/is-default-class annotation can be used to indicate "
        "that an IngressClass should be considered default.", "IngressClass",
        _NETWORKING + "IngressClassSpec"),
    _NETWORKING + "IngressClassSpec": _struct(
        "IngressClassSpec provides information about the class of an Ingress.",
        controller=_p(STRING, "The name of the controller that should handle this class, a "
                      "domain-prefixed path (lbcore.io/ingress-controller for lbcore)."),
        parameters=_p(OPEN, "A link to a custom resource with the controller's configuration"
                      + _OPEN_NOTE + "."),
    ),
    _NETWORKING + "IngressSpec": _struct(
        "IngressSpec describes the Ingress the user wishes to exist.",
        defaultBackend=_p(Ref(_NETWORKING + "IngressBackend"), "The backend that handles "
                          "requests that match no rule."),
        ingressClassName=_p(STRING, "The name of an IngressClass cluster resource; lbcore "
                            "serves the class lbcore."),
        rules=_p(Array(Ref(_NETWORKING + "IngressRule")), "A list of host rules used to "
                 "configure the Ingress."),
        tls=_p(Array(Ref(_NETWORKING + "IngressTLS")), "TLS configuration: the hosts served "
               "over TLS and the Secret holding their certificate."),
    ),
    _NETWORKING + "IngressBackend": _struct(
        "IngressBackend describes all endpoints for a given service and port.",
        resource=_p(OBJECT_REFERENCE, "A reference to another Kubernetes resource (not "
                    "served by lbcore)."),
        service=_p(Ref(_NETWORKING + "IngressServiceBackend"), "The referenced service."),
    ),
    _NETWORKING + "IngressServiceBackend": _struct(
        "IngressServiceBackend references a Kubernetes Service as a Backend.", ("name",),
        name=_p(STRING, "The referenced service, in the Ingress's namespace."),
        port=_p(Ref(_NETWORKING + "ServiceBackendPort"), "Port of the referenced service."),
    ),
    _NETWORKING + "ServiceBackendPort": _struct(
        "ServiceBackendPort is the service port being referenced.",
        name=_p(STRING, "The name of the port on the Service."),
        number=_p(INT32, "The numerical port number of the port on the Service."),
    ),
    _NETWORKING + "IngressRule": _struct(
        "IngressRule represents the rules mapping the paths under a specified host to the "
        "related backend services.",
        host=_p(STRING, "The fully qualified domain name of a network host, or a wildcard "
                "(*.example.com) matching one label."),
        http=_p(Ref(_NETWORKING + "HTTPIngressRuleValue"), "The paths of this host."),
    ),
    _NETWORKING + "HTTPIngressRuleValue": _struct(
        "HTTPIngressRuleValue is a list of http selectors pointing to backends.", ("paths",),
        paths=_p(Array(Ref(_NETWORKING + "HTTPIngressPath")), "A collection of paths that "
                 "map requests to backends."),
    ),
    _NETWORKING + "HTTPIngressPath": _struct(
        "HTTPIngressPath associates a path with a backend.", ("backend", "pathType"),
        backend=_p(Ref(_NETWORKING + "IngressBackend"), "Where matching requests go."),
        path=_p(STRING, "Matched against the path of an incoming request."),
        pathType=_p(_enum("Exact", "ImplementationSpecific", "Prefix"), "How the path is "
                    "matched: Exact, or Prefix by path element (ImplementationSpecific is "
                    "Prefix here)."),
    ),
    _NETWORKING + "IngressTLS": _struct(
        "IngressTLS describes the transport layer security associated with an ingress.",
        hosts=_p(Array(STRING, "atomic"), "Hosts included in the TLS certificate."),
        secretName=_p(STRING, "The Secret (type kubernetes.io/tls) used to terminate TLS."),
    ),
    _NETWORKING + "IngressStatus": _struct(
        "IngressStatus describes the current state of the Ingress.",
        loadBalancer=_p(Ref(_NETWORKING + "IngressLoadBalancerStatus"), "The addresses the "
                        "ingress is served on."),
    ),
    _NETWORKING + "IngressLoadBalancerStatus": _struct(
        "IngressLoadBalancerStatus represents the status of a load-balancer.",
        ingress=_p(Array(Ref(_NETWORKING + "IngressLoadBalancerIngress")), "The ingress "
                   "points of the load-balancer."),
    ),
    _NETWORKING + "IngressLoadBalancerIngress": _struct(
        "IngressLoadBalancerIngress represents the status of a load-balancer ingress point.",
        hostname=_p(STRING, "Set for ingress points that are DNS based."),
        ip=_p(STRING, "Set for ingress points that are IP based."),
        ports=_p(Array(OPEN), "Information on the ports of this ingress point"
                 + _OPEN_NOTE + "."),
    ),
    _ROUTE + "Route": _top(
        "A route allows developers to expose services through an HTTP(S) aware load "
        "balancing and proxy layer via a public DNS entry.", "Route", _ROUTE + "RouteSpec",
        _ROUTE + "RouteStatus"),
    _ROUTE + "RouteSpec": _struct(
        "RouteSpec describes the hostname or path the route exposes, any security "
        "information, and one to four backends (services) the route points to.", ("to",),
        alternateBackends=_p(Array(Ref(_ROUTE + "RouteTargetReference")), "Up to 3 more "
                             "backends, weighted with spec.to."),
        host=_p(STRING, "The alias/DNS that points to the service (a DNS subdomain)."),
        path=_p(STRING, "The path that the router watches for, to route traffic to the "
                "service."),
        port=_p(Ref(_ROUTE + "RoutePort"), "The target port on pods selected by the service."),
        subdomain=_p(STRING, "A DNS subdomain requested within the ingress controller's "
                     "domain (not used by lbcore: spec.host is required)."),
        tls=_p(Ref(_ROUTE + "TLSConfig"), "The TLS configuration of the route."),
        to=_p(Ref(_ROUTE + "RouteTargetReference"), "The service the route points to."),
        wildcardPolicy=_p(_enum("None", "Subdomain"), "The wildcard policy: None, or "
                          "Subdomain (every host of one more label in the host's domain)."),
    ),
    _ROUTE + "RouteTargetReference": _struct(
        "RouteTargetReference specifies the target that resolve into endpoints.",
        ("kind", "name"),
        kind=_p(_enum("Service"), "The kind of target the route is referring to: Service."),
        name=_p(STRING, "Name of the service/target that is being referred to."),
        weight=_p(INT32, "A relative weight, 0 to 256 (default 100)."),
    ),
    _ROUTE + "RoutePort": _struct(
        "RoutePort defines a port mapping from a router to an endpoint in the service "
        "endpoints.", ("targetPort",),
        targetPort=_p(INT_OR_STRING, "The target port on pods selected by the service; a "
                      "string is looked up as a named port."),
    ),
    _ROUTE + "TLSConfig": _struct(
        "TLSConfig defines config used to secure a route and provide termination.",
        ("termination",),
        caCertificate=_p(STRING, "The CA certificate (PEM) appended to the certificate's "
                         "chain."),
        certificate=_p(STRING, "The certificate (PEM)."),
        destinationCACertificate=_p(STRING, "reencrypt: the CA (PEM) the pod's certificate is "
                                    "verified against."),
        insecureEdgeTerminationPolicy=_p(_enum("Allow", "None", "Redirect"), "What plain "
                                         "HTTP gets: Allow, Redirect (302), or None."),
        key=_p(STRING, "The private key (PEM) of the certificate."),
        termination=_p(_enum("edge", "passthrough", "reencrypt"), "Where TLS ends."),
    ),
    _ROUTE + "RouteStatus": _struct(
        "RouteStatus provides relevant info about the status of a route.",
        ingress=_p(Array(Ref(_ROUTE + "RouteIngress")), "The places where the route may be "
                   "exposed."),
    ),
    _ROUTE + "RouteIngress": _struct(
        "RouteIngress holds information about the places where a route is exposed.",
        conditions=_p(Array(Ref(_ROUTE + "RouteIngressCondition")), "Admitted, with why "
                      "not."),
        host=_p(STRING, "Host is the host string under which the route is exposed."),
        routerCanonicalHostname=_p(STRING, "The external host name of the router."),
        routerName=_p(STRING, "Name is a name chosen by the router to identify itself."),
        wildcardPolicy=_p(STRING, "The wildcard policy that was allowed."),
    ),
    _ROUTE + "RouteIngressCondition": _struct(
        "RouteIngressCondition contains details for the current condition of this route on "
        "a particular router.", ("status", "type"),
        lastTransitionTime=_p(TIME, "RFC 3339 date and time when this condition last "
                              "transitioned."),
        message=_p(STRING, "Human readable message indicating details about last "
                   "transition."),
        reason=_p(STRING, "(brief) reason for the condition's last transition, such as "
                  "HostAlreadyClaimed."),
        status=_p(STRING, "Status is the status of the condition: True, False, Unknown."),
        type=_p(STRING, "Type is the type of the condition: Admitted."),
    ),
}


DEFINITIONS: Mapping[str, Definition] = {
    **_APIMACHINERY, **_SERVICE, **_ENDPOINTS, **_POD, **_NAMESPACE_EVENT,
    **_SECRET_INGRESS_ROUTE,
}

# kind -> the definition of its objects; every kind of the registry has one (a test says so)
KIND_SCHEMAS: Mapping[str, str] = {
    d.kind: name for name, d in DEFINITIONS.items() if d.kind is not None
}


# -- unknown fields -----------------------------------------------------------------------------

# what a writer may ask for unknown and duplicate fields, as the API server's fieldValidation
FIELD_VALIDATION = ("Ignore", "Strict", "Warn")


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """An unknown or duplicate field, with its path as the API server writes it."""

    path: str  # spec.ports[0].targetPrt
    duplicate: bool = False

    def __str__(self) -> str:
        return f'{"duplicate" if self.duplicate else "unknown"} field "{self.path}"'


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """A JSON object that named some of its keys more than once (the last value is kept)."""

    duplicates: tuple[str, ...] = ()


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(object_pairs_hook=...)`` that remembers keys given twice."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    counts: dict[str, int] = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    marked = DuplicateKeys(out)
    marked.duplicates = tuple(k for k, n in counts.items() if n > 1)
    return marked


def _walk(t: Type | Definition, value: Any, path: str,
          drop: bool) -> Iterator[FieldProblem]:
    if isinstance(t, Ref):
        t = DEFINITIONS[t.name]
    if isinstance(t, Definition):
        if t.scalar is not None or not isinstance(value, dict):
            return
        for key in getattr(value, "duplicates", ()):
            yield FieldProblem(_join(path, key), duplicate=True)
        if not t.properties:  # an open object
            return
        for key in list(value):
            prop = t.properties.get(key)
            if prop is None:
                yield FieldProblem(_join(path, key))
                if drop:
                    del value[key]
            else:
                yield from _walk(prop.type, value[key], _join(path, key), drop)
    elif isinstance(t, Array) and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(t.items, item, f"{path}[{i}]", drop)
    elif isinstance(t, Map) and isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(t.values, item, _join(path, key), drop)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _definition(kind: str) -> Definition | None:
    name = KIND_SCHEMAS.get(kind)
    return None if name is None else DEFINITIONS[name]


def unknown_fields(kind: str, obj: Mapping[str, Any]) -> list[FieldProblem]:
    """The fields of ``obj`` (an object of ``kind``) that its schema does not have, and those a
    JSON body named twice, in the order they appear; none for a kind without a schema."""
    definition = _definition(kind)
    return [] if definition is None else list(_walk(definition, obj, "", drop=False))


def drop_unknown_fields(kind: str, obj: dict[str, Any]) -> list[FieldProblem]:
    """Remove from ``obj`` (in place) the fields its schema does not have; what was found."""
    definition = _definition(kind)
    return [] if definition is None else list(_walk(definition, obj, "", drop=True))


# -- OpenAPI ------------------------------------------------------------------------------------


def group_versions() -> dict[str, list[Kind]]:
    """``api/v1``, ``apis/discovery.k8s.io/v1``, ...: the kinds served under each."""
    out: dict[str, list[Kind]] = {}
    for k in ALL_KINDS:
        out.setdefault(k.api_prefix.lstrip("/"), []).append(k)
    return out


def _gvk(kind: Kind) -> dict[str, str]:
    return {"group": kind.group, "kind": kind.kind, "version": kind.version}


def _type_schema(t: Type, ref_prefix: str, v3: bool) -> dict[str, Any]:
    if isinstance(t, Scalar):
        out: dict[str, Any] = {"type": t.type}
        if t.format:
            out["format"] = t.format
        if t.enum:
            out["enum"] = list(t.enum)
        return out
    if isinstance(t, Ref):
        if v3:  # the API server's v3 form: a reference with a default beside it
            scalar = DEFINITIONS[t.name].scalar is not None
            return {"allOf": [{"$ref": ref_prefix + t.name}], **({} if scalar else {"default": {}})}
        return {"$ref": ref_prefix + t.name}
    if isinstance(t, Open):
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if isinstance(t, Map):
        out = {"type": "object", "additionalProperties": _item(t.values, ref_prefix, v3)}
        if t.map_type:
            out["x-kubernetes-map-type"] = t.map_type
        return out
    out = {"type": "array", "items": _item(t.items, ref_prefix, v3),
           "x-kubernetes-list-type": t.list_type}
    if t.map_keys:
        out["x-kubernetes-list-map-keys"] = list(t.map_keys)
    if t.merge_key:
        out["x-kubernetes-patch-merge-key"] = t.merge_key
    if t.strategy:
        out["x-kubernetes-patch-strategy"] = t.strategy
    return out


def _item(t: Type, ref_prefix: str, v3: bool) -> dict[str, Any]:
    """The schema of a list's item or a map's value (v3 gives strings an empty default)."""
    out = _type_schema(t, ref_prefix, v3)
    if v3 and isinstance(t, Scalar) and t.type == "string":
        out["default"] = ""
    return out


def _definition_schema(name: str, ref_prefix: str, v3: bool) -> dict[str, Any]:
    d = DEFINITIONS[name]
    if d.scalar is not None:
        if v3 and d.one_of:  # OpenAPI 3 says "either type"; v2 has only the format
            one_of = [{"type": t} for t in d.one_of]
            fmt = {"format": d.scalar.format} if d.scalar.format else {}
            return {"description": d.description, **fmt, "oneOf": one_of}
        return {"description": d.description, **_type_schema(d.scalar, ref_prefix, v3)}
    out: dict[str, Any] = {"description": d.description, "type": "object"}
    if not d.properties:
        out["x-kubernetes-preserve-unknown-fields"] = True
        return out
    props = {}
    for key, prop in d.properties.items():
        schema = _type_schema(prop.type, ref_prefix, v3)
        if prop.description:
            schema["description"] = prop.description
        props[key] = schema
    out["properties"] = props
    if d.required:
        out["required"] = list(d.required)
    if d.atomic:
        out["x-kubernetes-map-type"] = "atomic"
    if d.kind is not None:
        kind = find_kind(d.kind)
        if kind is not None:
            out["x-kubernetes-group-version-kind"] = [_gvk(kind)]
    return out


def _list_schema(kind: Kind, ref_prefix: str) -> dict[str, Any]:
    return {
        "description": f"{kind.kind}List is a list of {kind.kind} objects.",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION.description},
            "items": {"type": "array", "description": f"List of {kind.plural}.",
                      "items": {"$ref": ref_prefix + KIND_SCHEMAS[kind.kind]}},
            "kind": {"type": "string", "description": _KIND.description},
            "metadata": {"$ref": ref_prefix + _META + "ListMeta",
                         "description": "Standard list metadata."},
        },
        "x-kubernetes-group-version-kind": [{**_gvk(kind), "kind": kind.kind + "List"}],
    }


def _referenced(names: list[str]) -> list[str]:
    """``names`` and every definition they refer to, sorted."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for prop in DEFINITIONS[name].properties.values():
            t = prop.type
            while isinstance(t, Array | Map):
                t = t.items if isinstance(t, Array) else t.values
            if isinstance(t, Ref):
                todo.append(t.name)
    return sorted(seen)


_QUERY = {
    "pretty": "If 'true', then the output is pretty printed.",
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "A name associated with the actor or entity that is making these changes.",
    "fieldValidation": "Instructs the server on how to handle objects in the request "
                       "containing unknown or duplicate fields: Ignore, Warn (the default) or "
                       "Strict.",
    "labelSelector": "A selector to restrict the list of returned objects by their labels.",
    "fieldSelector": "A selector to restrict the list of returned objects by their fields.",
    "resourceVersion": "Where a list or watch starts.",
    "timeoutSeconds": "Timeout for the list/watch call.",
    "watch": "Watch for changes to the described resources.",
    "allowWatchBookmarks": "Requests watch events with type BOOKMARK.",
    "force": "Force is going to \"force\" Apply requests.",
}
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
_LIST_PARAMS = ("allowWatchBookmarks", "fieldSelector", "labelSelector", "resourceVersion",
                "timeoutSeconds", "watch")
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json", "application/apply-patch+yaml")


def _parameter(name: str, where: str = "query", v3: bool = True) -> dict[str, Any]:
    schema = {"type": "boolean" if name in ("watch", "allowWatchBookmarks", "force") else
              "integer" if name == "timeoutSeconds" else "string", "uniqueItems": True}
    out: dict[str, Any] = {"name": name, "in": where,
                           "description": _QUERY.get(name, f"The {name} of the object.")}
    if where == "path":
        out["required"] = True
    if v3:
        out["schema"] = schema
    else:
        out.update(schema)
    return out


def _operations(kind: Kind, ref_prefix: str, v3: bool) -> dict[str, dict[str, Any]]:
    """The paths of ``kind``, each with its operations, in the API server's shape."""
    obj_ref = {"$ref": ref_prefix + KIND_SCHEMAS[kind.kind]}
    list_ref = {"$ref": ref_prefix + KIND_SCHEMAS[kind.kind] + "List"}
    gvk = _gvk(kind)

    def op(verb: str, action: str, ok: dict[str, Any], params: tuple[str, ...] = (),
           body: dict[str, Any] | None = None, content: tuple[str, ...] = ("application/json",),
           created: bool = False) -> dict[str, Any]:
        responses: dict[str, Any] = {}
        for code in ("200", "201") if created else ("200",):
            if v3:
                responses[code] = {"description": "OK" if code == "200" else "Created",
                                   "content": {"application/json": {"schema": ok},
                                               "application/yaml": {"schema": ok}}}
            else:
                responses[code] = {"description": "OK" if code == "200" else "Created",
                                   "schema": ok}
        responses["401"] = {"description": "Unauthorized"}
        out: dict[str, Any] = {
            "description": f"{verb} {kind.kind}",
            "operationId": f"{verb}{kind.kind}",
            "tags": [kind.api_prefix.strip("/").replace("/", "_")],
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }
        parameters = [_parameter(p, v3=v3) for p in params]
        if body is not None:
            if v3:
                out["requestBody"] = {"required": True, "content": {
                    t: {"schema": body} for t in content}}
            else:
                parameters.append({"name": "body", "in": "body", "required": True,
                                   "schema": body})
                out["consumes"] = list(content)
        if parameters:
            out["parameters"] = parameters
        if not v3:
            out["produces"] = ["application/json", "application/yaml"]
            out["schemes"] = ["https"]
        return out

    namespace = _parameter("namespace", "path", v3)
    name = _parameter("name", "path", v3)
    pretty = _parameter("pretty", v3=v3)
    patch_body = {"type": "object"}  # a patch of any of the four types
    collection = {
        "get": op("list", "list", list_ref, _LIST_PARAMS),
        "post": op("create", "post", obj_ref, _WRITE_PARAMS, obj_ref, created=True),
        "parameters": [namespace, pretty] if kind.namespaced else [pretty],
    }
    item = {
        "get": op("read", "get", obj_ref),
        "put": op("replace", "put", obj_ref, _WRITE_PARAMS, obj_ref, created=True),
        "patch": op("patch", "patch", obj_ref, (*_WRITE_PARAMS, "force"), patch_body,
                    _PATCH_TYPES, created=True),
        "delete": op("delete", "delete", obj_ref, ("dryRun",)),
        "parameters": [name, namespace, pretty] if kind.namespaced else [name, pretty],
    }
    prefix = kind.api_prefix + ("/namespaces/{namespace}" if kind.namespaced else "")
    paths = {f"{prefix}/{kind.plural}": collection, f"{prefix}/{kind.plural}/{{name}}": item}
    if kind.namespaced:
        paths[f"{kind.api_prefix}/{kind.plural}"] = {
            "get": op("listForAllNamespaces", "list", list_ref, _LIST_PARAMS),
            "parameters": [pretty]}
    return paths


def _schemas(kinds: list[Kind], ref_prefix: str, v3: bool) -> dict[str, Any]:
    served = [k for k in kinds if k.kind in KIND_SCHEMAS]
    out = {name: _definition_schema(name, ref_prefix, v3)
           for name in _referenced([KIND_SCHEMAS[k.kind] for k in served]
                                   + [_META + "ListMeta"])}
    for k in served:
        out[KIND_SCHEMAS[k.kind] + "List"] = _list_schema(k, ref_prefix)
    return dict(sorted(out.items()))


def _info(version: str) -> dict[str, str]:
    from lbcore import __version__

    return {"title": "lbcore", "version": f"{version} (lbcore {__version__})"}


def openapi_v2(kubernetes_version: str) -> dict[str, Any]:
    """The Swagger 2.0 document of every kind served (``/openapi/v2``)."""
    kinds = [k for k in ALL_KINDS if k.kind in KIND_SCHEMAS]
    paths: dict[str, Any] = {}
    for k in kinds:
        paths.update(_operations(k, "#/definitions/", v3=False))
    return {"swagger": "2.0", "info": _info(kubernetes_version), "paths": paths,
            "definitions": _schemas(kinds, "#/definitions/", v3=False)}


# the protobuf form of /openapi/v2 (gnostic's openapi.v2.Document), which kubectl reads to
# validate on the client what the server cannot be asked to (a ``kind: List``): the document's
# swagger, info and definitions, each schema with the fields kubectl's validation reads
_PB_DOCUMENT = {"swagger": 1, "info": 2, "definitions": 9}
_PB_INFO = {"title": 1, "version": 2}
_PB_SCHEMA_STRINGS = {"$ref": 1, "format": 2, "title": 3, "description": 4}
_PB_SCHEMA_REQUIRED, _PB_SCHEMA_ENUM, _PB_SCHEMA_ADDITIONAL = 19, 20, 21
_PB_SCHEMA_TYPE, _PB_SCHEMA_ITEMS, _PB_SCHEMA_ALL_OF, _PB_SCHEMA_PROPERTIES = 22, 23, 24, 25
_PB_SCHEMA_UNIQUE_ITEMS, _PB_SCHEMA_VENDOR_EXTENSION = 16, 31


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _flag(number: int, value: bool) -> bytes:
    return _varint(number << 3) + _varint(int(value)) if value else b""


def _pb_named(name: str, value: bytes) -> bytes:
    """A NamedSchema or NamedAny: name = 1, value = 2."""
    return _field(1, name) + _field(2, value)


def _any(value: Any) -> bytes:
    """gnostic's Any, as YAML text (JSON is YAML): yaml = 2."""
    return _field(2, json.dumps(value))


def _pb_schema(schema: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for key, number in _PB_SCHEMA_STRINGS.items():
        if schema.get(key):
            out += _field(number, schema[key])
    out += _flag(_PB_SCHEMA_UNIQUE_ITEMS, bool(schema.get("uniqueItems")))
    for name in schema.get("required", ()):
        out += _field(_PB_SCHEMA_REQUIRED, name)
    for value in schema.get("enum", ()):
        out += _field(_PB_SCHEMA_ENUM, _any(value))
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        out += _field(_PB_SCHEMA_ADDITIONAL, _field(1, _pb_schema(additional)))
    if "type" in schema:
        out += _field(_PB_SCHEMA_TYPE, _field(1, schema["type"]))
    if "items" in schema:
        out += _field(_PB_SCHEMA_ITEMS, _field(1, _pb_schema(schema["items"])))
    for part in schema.get("allOf", ()):
        out += _field(_PB_SCHEMA_ALL_OF, _pb_schema(part))
    if "properties" in schema:
        out += _field(_PB_SCHEMA_PROPERTIES, b"".join(
            _field(1, _pb_named(name, _pb_schema(prop)))
            for name, prop in schema["properties"].items()))
    for key, value in schema.items():
        if key.startswith("x-"):
            out += _field(_PB_SCHEMA_VENDOR_EXTENSION, _pb_named(key, _any(value)))
    return bytes(out)


def openapi_v2_protobuf(kubernetes_version: str) -> bytes:
    """``/openapi/v2`` as ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``: the
    swagger version, info and every definition of :func:`openapi_v2` (its paths are in the
    JSON form only)."""
    doc = openapi_v2(kubernetes_version)
    info = b"".join(_field(n, doc["info"][k]) for k, n in _PB_INFO.items())
    definitions = b"".join(_field(1, _pb_named(name, _pb_schema(schema)))
                           for name, schema in doc["definitions"].items())
    return (_field(_PB_DOCUMENT["swagger"], doc["swagger"]) + _field(_PB_DOCUMENT["info"], info)
            + _field(_PB_DOCUMENT["definitions"], definitions))


def openapi_v3(group_version: str, kubernetes_version: str) -> dict[str, Any] | None:
    """The OpenAPI 3.0 document of one group version (``api/v1``, ``apis/discovery.k8s.io/v1``),
    or None when nothing is served there."""
    kinds = [k for k in group_versions().get(group_version, ()) if k.kind in KIND_SCHEMAS]
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    for k in kinds:
        paths.update(_operations(k, "#/components/schemas/", v3=True))
    return {"openapi": "3.0.0", "info": _info(kubernetes_version), "paths": paths,
            "components": {"schemas": _schemas(kinds, "#/components/schemas/", v3=True)}}


def openapi_v3_index(kubernetes_version: str) -> dict[str, Any]:
    """``/openapi/v3``: each group version's document, at a URL naming its content's hash (so a
    client may cache it for as long as the URL stays the same)."""
    paths = {}
    for gv in group_versions():
        doc = openapi_v3(gv, kubernetes_version)
        if doc is not None:
            paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={document_hash(doc)}"}
    return {"paths": paths}


def document_hash(doc: Mapping[str, Any]) -> str:
    """The hash the API server puts in a document's URL (SHA-512 of its JSON, upper hex)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha512(text).hexdigest().upper()
