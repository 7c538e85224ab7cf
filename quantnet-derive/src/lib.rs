//! # quantnet-derive: `#[derive(QatModel)]`
//!
//! Writes a model's `quantnet_models::models::QatModel` implementation from its fields, the way
//! Burn's `#[derive(Module)]` finds its parameters: a model lists its quantizable places without
//! a hand-written `slots()`. Use it through `quantnet_models::models::QatModel` (the derive is
//! re-exported beside the trait).
//!
//! What each field gives, in the order the fields are declared (the precision policy keeps the
//! first and the last weight layer full precision, so declare the weight layers in forward order):
//!
//! | Field type | Slot |
//! |---|---|
//! | `QuantConv2d<B>` | a convolution named after the field |
//! | `QuantLinear<B>` | a linear layer |
//! | `QuantAct<B>` | an activation slot |
//! | `[T; N]`, `Vec<T>` of those | one slot per element, named `field.0`, `field.1`, … |
//! | `Option<T>` of those | a slot when it is `Some` |
//! | any module marked `#[qat(nested)]` (or an array, `Vec` or `Option` of them) | its own slots, named `field.inner` (`field.0.inner`, …) |
//!
//! Other fields are not quantizable places and are left out, as is a field marked `#[qat(skip)]`.
//! The backend is the struct's first type parameter. `float_layers` keeps its default (the
//! first and the last weight layer); write the implementation by hand to choose others.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, GenericArgument, PathArguments, Type, parse_macro_input};

/// `QatModel` for a struct of quantnet layers (see the crate's documentation).
#[proc_macro_derive(QatModel, attributes(qat))]
pub fn derive_qat_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What a field holds.
#[derive(Clone, Copy)]
enum Kind {
    Conv,
    Linear,
    Act,
    Nested,
}

/// How the field holds it.
enum Shape {
    One,
    Many,
    Maybe,
}

/// How a field is marked.
#[derive(PartialEq)]
enum Mark {
    None,
    Skip,
    Nested,
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(QatModel)] needs a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(QatModel)] needs a struct with named fields",
        ));
    };
    let Some(backend) = input.generics.type_params().next().map(|p| &p.ident) else {
        return Err(syn::Error::new_spanned(
            name,
            "#[derive(QatModel)] needs the backend as the struct's first type parameter",
        ));
    };
    let mut body = Vec::new();
    for field in &fields.named {
        let Some(ident) = field.ident.as_ref() else {
            continue;
        };
        let mark = mark(field)?;
        if mark == Mark::Skip {
            continue;
        }
        let Some((kind, shape)) = classify(&field.ty, mark == Mark::Nested) else {
            continue;
        };
        let label = ident.to_string();
        let add = |target: Tokens, name: Tokens| match kind {
            Kind::Conv => quote! { slots.conv(#name, #target); },
            Kind::Linear => quote! { slots.linear(#name, #target); },
            Kind::Act => quote! { slots.act(#name, #target); },
            Kind::Nested => quote! {
                slots.nest(#name, ::quantnet_models::models::QatModel::<#backend>::slots(#target));
            },
        };
        let item = format_ident!("item");
        body.push(match shape {
            Shape::One => add(quote! { &mut self.#ident }, quote! { #label }),
            Shape::Maybe => {
                let add = add(quote! { #item }, quote! { #label });
                quote! { if let Some(#item) = self.#ident.as_mut() { #add } }
            }
            Shape::Many => {
                let add = add(
                    quote! { #item },
                    quote! { ::std::format!("{}.{}", #label, i) },
                );
                quote! { for (i, #item) in self.#ident.iter_mut().enumerate() { #add } }
            }
        });
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::quantnet_models::models::QatModel<#backend> for #name #ty_generics
        #where_clause
        {
            fn slots(&mut self) -> ::quantnet_models::models::Slots<'_, #backend> {
                let mut slots = ::quantnet_models::models::Slots::new();
                #(#body)*
                slots
            }
        }
    })
}

/// The field's `#[qat(...)]` mark.
fn mark(field: &syn::Field) -> syn::Result<Mark> {
    let mut mark = Mark::None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("qat")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                mark = Mark::Skip;
                Ok(())
            } else if meta.path.is_ident("nested") {
                mark = Mark::Nested;
                Ok(())
            } else {
                Err(meta.error("expected #[qat(skip)] or #[qat(nested)]"))
            }
        })?;
    }
    Ok(mark)
}

/// The slot kind of `ty` and how it is held, or `None` for a field that is not a place.
fn classify(ty: &Type, nested: bool) -> Option<(Kind, Shape)> {
    let leaf = |ty: &Type| -> Option<Kind> {
        if nested {
            return Some(Kind::Nested);
        }
        match last_segment(ty)?.ident.to_string().as_str() {
            "QuantConv2d" => Some(Kind::Conv),
            "QuantLinear" => Some(Kind::Linear),
            "QuantAct" => Some(Kind::Act),
            _ => None,
        }
    };
    if let Type::Array(array) = ty {
        return leaf(&array.elem).map(|k| (k, Shape::Many));
    }
    if let Some(segment) = last_segment(ty) {
        let shape = match segment.ident.to_string().as_str() {
            "Vec" => Some(Shape::Many),
            "Option" => Some(Shape::Maybe),
            _ => None,
        };
        if let (Some(shape), Some(inner)) = (shape, first_type_argument(segment)) {
            return leaf(inner).map(|k| (k, shape));
        }
    }
    leaf(ty).map(|k| (k, Shape::One))
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) => path.path.segments.last(),
        _ => None,
    }
}

fn first_type_argument(segment: &syn::PathSegment) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}
